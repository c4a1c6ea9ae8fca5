"""Supervisord over XML-RPC: the only module that talks to it. Its faults and socket and
HTTP errors become `SupervisorFault` / `SupervisorUnreachable` here.

Programs are named ``group:name``, or plain ``name`` meaning ``name:name`` (a ``[program:x]``
with ``numprocs = 1``); in a ``[group:g]`` or with ``numprocs > 1``: ``g:x`` / ``x:x_00``.
Starts and stops are sent with ``wait=False`` and polled here, so each wait is bounded by our
timeout, not by ``startsecs``/``stopwaitsecs``. Not thread-safe: one `Supervisor` a thread.
"""

from __future__ import annotations

import http.client
import socket
import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from xml.parsers.expat import ExpatError

import structlog
from supervisor.xmlrpc import Faults, SupervisorTransport, getFaultDescription

from watcher.errors import ConfigError, SupervisorFault, SupervisorUnreachable

RUNNING = "RUNNING"
STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL", "UNKNOWN"})
POLL_INTERVAL = 0.1

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


@dataclass(frozen=True)
class ProcessInfo:
    """One process as supervisord reports it (`supervisor.getProcessInfo`)."""

    name: str
    group: str
    statename: str
    pid: int
    start: int
    description: str
    spawnerr: str = ""
    exitstatus: int = 0

    @classmethod
    def from_rpc(cls, raw: dict[str, Any]) -> ProcessInfo:
        return cls(
            name=str(raw["name"]),
            group=str(raw["group"]),
            statename=str(raw["statename"]),
            pid=int(raw["pid"]),
            start=int(raw["start"]),
            description=str(raw.get("description", "")),
            spawnerr=str(raw.get("spawnerr", "")),
            exitstatus=int(raw.get("exitstatus", 0)),
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


def _split_namespec(program: str) -> tuple[str, str]:
    """``g:x`` -> (g, x); ``x`` -> (x, x), as supervisord's `split_namespec` reads it."""
    group, _, name = program.partition(":")
    return group, name or group


class Supervisor:
    """A client for one supervisord; every call has `timeout` seconds to be answered."""

    def __init__(
        self, url: str, username: str = "", password: str = "", timeout: float = 10.0
    ) -> None:
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:  # never echo this URL
            raise ConfigError(
                "supervisor.url must not contain credentials; "
                "use supervisor.username and supervisor.password_file"
            )
        if parts.scheme not in ("unix", "http"):
            raise ConfigError(f"supervisor.url must start with unix:// or http://, got {url!r}")
        self.url = url
        self.username = username
        self.timeout = timeout
        self._transport = SupervisorTransport(username or None, password if username else None, url)
        # SupervisorTransport (4.3) opens sockets without a timeout, so a hung supervisord
        # would hang us. Replace its connection factory (an attribute its __init__ sets).
        if parts.scheme == "unix":
            path = url[len("unix://") :]
            self._transport._get_connection = lambda: _UnixConnection(path, timeout)
            proxy_url = "http://127.0.0.1"
        else:
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            self._transport._get_connection = lambda: http.client.HTTPConnection(
                host, port, timeout=timeout
            )
            proxy_url = url
        self._proxy = xmlrpc.client.ServerProxy(proxy_url, transport=self._transport)

    def __repr__(self) -> str:
        return f"Supervisor(url={self.url!r}, username={self.username!r})"

    def close(self) -> None:
        self._transport.close()

    # -- the border: every call goes through here ------------------------------------

    def _call(self, method: str, *args: Any, ok: tuple[int, ...] = ()) -> Any:
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
            text = f"supervisord fault {getFaultDescription(code)} in {method}"
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

    # -- queries ----------------------------------------------------------------------

    def check(self) -> str:
        """supervisord's own state: RUNNING, RESTARTING, SHUTDOWN or FATAL."""
        return str(self._call("getState")["statename"])

    def info(self, program: str) -> ProcessInfo:
        return ProcessInfo.from_rpc(self._call("getProcessInfo", program))

    def pid(self, program: str) -> int:
        info = self.info(program)
        if not info.pid:
            raise SupervisorFault(f"{program} has no pid: it is {info.statename}")
        return info.pid

    def program_command(self, program: str) -> str | None:
        """The configured command line of `program`, or None when supervisord cannot say."""
        configs = self._call("getAllConfigInfo", ok=(Faults.UNKNOWN_METHOD,)) or []
        group, name = _split_namespec(program)
        for entry in configs:
            if entry.get("group") == group and entry.get("name") == name:
                return str(entry["command"])
        return None

    def program_config(self, program: str) -> dict[str, Any] | None:
        """supervisord's config of `program` (stopwaitsecs, stopsignal, stopasgroup...), or
        None when it has no such program or cannot say."""
        configs = self._call("getAllConfigInfo", ok=(Faults.UNKNOWN_METHOD,)) or []
        group, name = _split_namespec(program)
        for entry in configs:
            if entry.get("group") == group and entry.get("name") == name:
                return dict(entry)
        return None

    # -- actions ----------------------------------------------------------------------

    def restart_workers(self, programs: list[str], start_timeout: float) -> list[ProcessInfo]:
        """Background workers (Celery and the like) onto the code behind their directory:
        all stopped at once with their own stopsignal (TERM: a warm shutdown that lets
        running tasks finish) and supervisord's `stopwaitsecs` before it kills, then all
        started at once and waited for RUNNING (`startsecs`). Never HUP: a worker re-reads
        nothing on HUP, or re-executes itself outside supervisord's view. Raises
        SupervisorFault naming the first worker that does not stop or start."""
        log = structlog.get_logger()
        graces = {}
        for program in programs:
            graces[program] = float((self.program_config(program) or {}).get("stopwaitsecs")
                                    or 10)
            log.info("supervisor.stop", program=program, signal="stopsignal", worker=True)
            self._call("stopProcess", program, False, ok=(Faults.NOT_RUNNING,))
        for program in programs:  # supervisord KILLs at stopwaitsecs: wait a little longer
            self.stop(program, wait_timeout=graces[program] + 10)
        for program in programs:
            log.info("supervisor.start", program=program, worker=True)
            self._call("startProcess", program, False, ok=(Faults.ALREADY_STARTED,))
        started = []
        for program in programs:
            info = self._wait(program, start_timeout, fail=STOPPED_STATES | {"BACKOFF"})
            log.info("supervisor.started", program=program, pid=info.pid, worker=True)
            started.append(info)
        return started

    def hup(self, program: str) -> None:
        structlog.get_logger().info("supervisor.hup", program=program)
        self._call("signalProcess", program, "HUP")

    def signal(self, program: str, name: str) -> None:
        """Send signal `name` (TTIN, TTOU...) to the program's process."""
        structlog.get_logger().info("supervisor.signal", program=program, signal=name)
        self._call("signalProcess", program, name)

    def start(self, program: str, wait_timeout: float) -> ProcessInfo:
        """Start `program` (already started is fine) and wait until it is RUNNING.

        Fails at the first BACKOFF, as ``supervisorctl start`` does: the program died
        before ``startsecs``; supervisord may still be retrying it in the background.
        """
        structlog.get_logger().info("supervisor.start", program=program)
        self._call("startProcess", program, False, ok=(Faults.ALREADY_STARTED,))
        info = self._wait(program, wait_timeout, fail=STOPPED_STATES | {"BACKOFF"})
        structlog.get_logger().info("supervisor.started", program=program, pid=info.pid)
        return info

    def stop(self, program: str, wait_timeout: float = 60.0) -> None:
        """Stop `program` and wait until it is down; a program not running is fine."""
        structlog.get_logger().info("supervisor.stop", program=program)
        self._call("stopProcess", program, False, ok=(Faults.NOT_RUNNING,))
        deadline = time.monotonic() + wait_timeout
        while (info := self.info(program)).statename not in STOPPED_STATES:
            if time.monotonic() >= deadline:
                raise SupervisorFault(
                    f"{program} did not stop within {wait_timeout:g}s ({info.statename})"
                )
            time.sleep(POLL_INTERVAL)

    def wait_running(self, program: str, timeout: float) -> ProcessInfo:
        """Poll until `program` is RUNNING; STOPPED or FATAL fail at once (EXITED may restart)."""
        return self._wait(program, timeout, fail=STOPPED_STATES - {"EXITED"})

    def reload(self, program: str, mode: str, wait_timeout: float) -> ProcessInfo:
        """Make `program` run the code now behind its ``--chdir``.

        ``hup``: HUP a RUNNING program (Gunicorn keeps its master pid and replaces its
        workers); a stopped one is started (first deploy); one in STARTING or BACKOFF,
        e.g. a failed release being rolled back, is stopped and started afresh.
        ``restart``: stop (when up) and start.
        """
        if mode not in ("hup", "restart"):
            raise ValueError(f"reload mode must be 'hup' or 'restart', not {mode!r}")
        before = self.info(program)
        if mode == "hup" and before.statename == RUNNING:
            self.hup(program)
            after = self.wait_running(program, wait_timeout)
            if after.pid != before.pid:
                # The master died on HUP and supervisord restarted it: running, but say so.
                structlog.get_logger().warning(
                    "supervisor.hup_pid_changed", program=program, old=before.pid, new=after.pid
                )
            return after
        if before.statename not in STOPPED_STATES:
            self.stop(program)
        return self.start(program, wait_timeout)

    def _wait(self, program: str, timeout: float, fail: frozenset[str]) -> ProcessInfo:
        deadline = time.monotonic() + timeout
        while True:
            info = self.info(program)
            if info.statename == RUNNING:
                return info
            detail = info.spawnerr or info.description or "see its log"
            if info.statename in fail:
                raise SupervisorFault(
                    f"{program} did not start: {info.statename}, {detail} (spawn error)"
                )
            if time.monotonic() >= deadline:
                raise SupervisorFault(
                    f"{program} not RUNNING within {timeout:g}s: {info.statename}, {detail}"
                )
            time.sleep(POLL_INTERVAL)
