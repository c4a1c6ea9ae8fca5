"""The wire to supervisord: XML-RPC over its unix socket or HTTP, each call with a timeout
and a connection of its own. Its fault codes and socket and HTTP errors become
`SupervisorFault` / `SupervisorUnreachable` here, in `SupervisorLink.call`, the one door
through which `supervisor_rpc.Supervisor` reaches supervisord.
"""

from __future__ import annotations

import base64
import http.client
import socket
import xmlrpc.client
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit
from xml.parsers.expat import ExpatError

from watcher.errors import ConfigError, SupervisorFault, SupervisorUnreachable


class Faults:
    """supervisord's XML-RPC fault codes (`supervisor.xmlrpc.Faults`, the same in 3.x and
    4.x), here so that talking to supervisord does not import the supervisor package."""

    UNKNOWN_METHOD = 1
    INCORRECT_PARAMETERS = 2
    BAD_ARGUMENTS = 3
    SIGNATURE_UNSUPPORTED = 4
    SHUTDOWN_STATE = 6
    BAD_NAME = 10
    BAD_SIGNAL = 11
    NO_FILE = 20
    NOT_EXECUTABLE = 21
    FAILED = 30
    ABNORMAL_TERMINATION = 40
    SPAWN_ERROR = 50
    ALREADY_STARTED = 60
    NOT_RUNNING = 70
    SUCCESS = 80
    ALREADY_ADDED = 90
    STILL_RUNNING = 91
    CANT_REREAD = 92


def fault_name(code: int) -> str:
    return next((k for k, v in vars(Faults).items() if v == code and k.isupper()), "UNKNOWN")

_FAULT_TEXT = {
    Faults.BAD_NAME: "no program named {program} in supervisord",
    Faults.NO_FILE: "the command of {program} does not exist",
    Faults.NOT_EXECUTABLE: "the command of {program} cannot be executed",
    Faults.SPAWN_ERROR: "supervisord could not spawn {program}",
    Faults.ABNORMAL_TERMINATION: "{program} exited while starting",
    Faults.NOT_RUNNING: "{program} is not running",
    Faults.BAD_SIGNAL: "supervisord does not know that signal",
    Faults.FAILED: "supervisord failed to act on {program}",
}
_OS_ERRORS: tuple[tuple[type[OSError], str], ...] = (
    (FileNotFoundError, "its socket file does not exist (is supervisord running?)"),
    (ConnectionRefusedError, "connection refused (is supervisord running?)"),
    (PermissionError, "permission denied (check chown/chmod of its socket)"),
)


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket, with a timeout (supervisor's own has none)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # close() closes it
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class _Transport(xmlrpc.client.Transport):
    """xmlrpc.client's transport over `connect` (a unix socket or TCP, with a timeout), with
    HTTP basic auth when supervisord has a username."""

    def __init__(self, connect: Callable[[], http.client.HTTPConnection], auth: str) -> None:
        super().__init__()
        self._connect, self._auth = connect, auth

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = self._connection[1]
        if conn is None:
            conn = self._connect()
            self._connection = host, conn
        return conn

    def send_headers(self, connection: http.client.HTTPConnection,
                     headers: list[tuple[str, str]]) -> None:
        if self._auth:
            connection.putheader("Authorization", self._auth)
        super().send_headers(connection, headers)


class SupervisorLink:
    """XML-RPC to one supervisord; every call has `timeout` seconds to be answered."""

    def __init__(self, url: str, username: str, password: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:  # never echo this URL
            raise ConfigError(
                "supervisor.url must not contain credentials; "
                "use supervisor.username and supervisor.password_file"
            )
        if parts.scheme not in ("unix", "http"):
            raise ConfigError(f"supervisor.url must start with unix:// or http://, got {url!r}")
        self.url = url
        self.timeout = timeout
        auth = ""
        if username:
            pair = f"{username}:{password}".encode()
            auth = "Basic " + base64.b64encode(pair).decode("ascii")
        connect: Callable[[], http.client.HTTPConnection]
        if parts.scheme == "unix":
            path = url[len("unix://") :]
            connect = lambda: _UnixConnection(path, timeout)  # noqa: E731
            proxy_url = "http://127.0.0.1"
        else:
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            connect = lambda: http.client.HTTPConnection(host, port,  # noqa: E731
                                                         timeout=timeout)
            proxy_url = url
        self._transport = _Transport(connect, auth)
        self._proxy = xmlrpc.client.ServerProxy(proxy_url, transport=self._transport)

    def close(self) -> None:
        self._transport.close()

    def call(self, method: str, *args: Any, ok: tuple[int, ...] = ()) -> Any:
        """Call ``supervisor.<method>``; fault codes in `ok` return None instead of raising."""
        program = str(args[0]) if args else ""
        if program.endswith((":", ":*")):  # supervisord would act on the whole group
            raise SupervisorFault(f"{program} names a group; name one process (group:name)")
        try:
            return getattr(self._proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode in ok:
                return None
            raise self._fault(exc, method, program) from exc
        except xmlrpc.client.ProtocolError as exc:
            if exc.errcode == 401:
                raise SupervisorFault(
                    f"supervisord at {self.url} refused the username/password (HTTP 401); "
                    "check supervisor.username and supervisor.password_file"
                ) from exc
            raise SupervisorFault(
                f"{self.url} answered HTTP {exc.errcode} {exc.errmsg}: is it supervisord?"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise SupervisorUnreachable(
                f"supervisord at {self.url} is unreachable: {self._what_happened(exc)}"
            ) from exc
        except ExpatError as exc:
            raise SupervisorFault(f"{self.url} did not answer XML-RPC: {exc}") from exc
        finally:
            # One connection per call: a kept-alive one goes stale when supervisord restarts,
            # and a call cut off by a timeout leaves it mid-response.
            self._transport.close()

    def _what_happened(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.timeout:g}s"
        for kind, text in _OS_ERRORS:
            if isinstance(exc, kind):
                return text
        return f"{type(exc).__name__}: {exc}"

    def _fault(
        self, exc: xmlrpc.client.Fault, method: str, program: str
    ) -> SupervisorFault | SupervisorUnreachable:
        code = exc.faultCode
        if code == Faults.SHUTDOWN_STATE:
            return SupervisorUnreachable(f"supervisord at {self.url} is shutting down")
        template = _FAULT_TEXT.get(code)
        if template is None:
            text = f"supervisord fault {fault_name(code)} in {method}"
        else:
            text = template.format(program=program)
        if code == Faults.BAD_NAME:
            text += " (names are 'program' or 'group:program'" + self._known_names() + ")"
        return SupervisorFault(f"{text} [supervisord: {exc.faultString}]")

    def _known_names(self) -> str:
        try:
            procs: Any = self._proxy.supervisor.getAllProcessInfo()
        except (xmlrpc.client.Error, OSError, http.client.HTTPException, ExpatError):
            return ""
        finally:
            self._transport.close()
        names = ", ".join(sorted(f"{p['group']}:{p['name']}" for p in procs)[:10])
        return f"; known: {names or 'none'}"
