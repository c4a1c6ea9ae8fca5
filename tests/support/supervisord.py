"""A real supervisord for tests, on a short unix socket (and optionally HTTP with auth).

    with SupervisordProcess(tmp_path, {"app": "command=/bin/sleep 60"}) as sv:
        Supervisor(sv.url).info("app")

`supervisord_factory` is a generator for a pytest fixture that may start several and
stops them all at teardown, e.g. in a conftest:

    supervisord_factory = pytest.fixture(scope="module")(supervisord_factory)

`stop()` never leaves a process behind: it stops every program, asks supervisord to shut
down, kills it if it does not, then SIGKILLs every process still carrying the environment
marker this supervisord was started with (its children and theirs, even re-parented ones).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xmlrpc.client
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import pytest
from supervisor.xmlrpc import SupervisorTransport

BIN_DIR = Path(sys.executable).parent


def supervisord_bin() -> Path:
    """supervisord from the running interpreter's venv."""
    return BIN_DIR / "supervisord"


def gunicorn_bin() -> Path:
    return BIN_DIR / "gunicorn"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


WSGI_APP = """\
import os


def application(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def write_wsgi_app(directory: Path) -> Path:
    """Write `app.py` whose `application` answers with the serving worker's pid."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "app.py"
    path.write_text(WSGI_APP)
    return path


def gunicorn_program(app_dir: Path, port: int, extra: str = "") -> str:
    """A `[program:x]` body running Gunicorn (one worker) on `port` from `app_dir`."""
    return (
        f"command={gunicorn_bin()} --bind 127.0.0.1:{port} --workers 1 "
        f"--graceful-timeout 5 --chdir {app_dir} app:application\n"
        "autostart=false\nstartsecs=1\nstopwaitsecs=5\nstopasgroup=true\nkillasgroup=true\n"
        f"{extra}"
    )


def pids_with_env(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` ("NAME=value")."""
    needle = b"\0" + marker.encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in b"\0" + (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class SupervisordProcess:
    """supervisord as a child of the test run; programs are `[program:NAME]` bodies."""

    def __init__(
        self,
        tmpdir: Path,
        programs: Mapping[str, str] | None = None,
        *,
        http: bool = False,
        username: str = "",
        password: str = "",
        startup_timeout: float = 10.0,
    ) -> None:
        self.tmpdir = tmpdir
        self.conf_dir = tmpdir / "conf.d"
        self.conf_path = tmpdir / "supervisord.conf"
        self.log_path = tmpdir / "supervisord.log"
        # Unix socket paths are limited to ~107 bytes; pytest's tmp dirs can be longer.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="sv", dir="/tmp"))
        self.socket_path = self._sock_dir / "s.sock"
        self.unix_url = f"unix://{self.socket_path}"
        self.http_port = free_port() if http else 0
        self.http_url = f"http://127.0.0.1:{self.http_port}" if http else ""
        self.username, self.password = username, password
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        # Every process supervisord starts inherits this, so stop() can find them all even
        # when supervisord itself was killed and its children were re-parented.
        self.env_marker = f"WATCHER_TEST_SUPERVISORD={uuid.uuid4().hex}"
        self._programs = dict(programs or {})

    @property
    def url(self) -> str:
        """The URL watcher should use: HTTP (with auth) in http mode, else the unix socket."""
        return self.http_url or self.unix_url

    def rpc(self) -> Any:
        """`supervisor.*` over the unix socket (no auth), for test set-up and teardown."""
        transport = SupervisorTransport(None, None, self.unix_url)
        transport._get_connection = lambda: _UnixConnection(str(self.socket_path))
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def _write_conf(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.tmpdir / "logs").mkdir(exist_ok=True)
        inet = ""
        if self.http_port:
            inet = f"[inet_http_server]\nport=127.0.0.1:{self.http_port}\n"
            if self.username:
                inet += f"username={self.username}\npassword={self.password}\n"
        self.conf_path.write_text(
            f"[unix_http_server]\nfile={self.socket_path}\nchmod=0700\n\n{inet}\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisord]\nnodaemon=true\nlogfile={self.log_path}\n"
            f"pidfile={self.tmpdir / 'supervisord.pid'}\nchildlogdir={self.tmpdir / 'logs'}\n"
            "loglevel=info\n\n"
            f"[supervisorctl]\nserverurl={self.unix_url}\n\n"
            f"[include]\nfiles={self.conf_dir}/*.conf\n"
        )
        for name, body in self._programs.items():
            self._write_program(name, body)

    def _write_program(self, name: str, body: str) -> None:
        (self.conf_dir / f"{name}.conf").write_text(f"[program:{name}]\n{body.strip()}\n")

    def start(self) -> SupervisordProcess:
        self._write_conf()
        self.proc = subprocess.Popen(
            [str(supervisord_bin()), "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **dict([self.env_marker.split("=", 1)])},
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"supervisord exited at start: {self.log_tail()}")
            try:
                if self.rpc().getState()["statename"] == "RUNNING":
                    return self
            except (OSError, http.client.HTTPException, xmlrpc.client.Error):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"supervisord did not come up: {self.log_tail()}")
            time.sleep(0.05)

    def add_program(self, name: str, body: str) -> None:
        """Write `[program:NAME]` into conf.d and make supervisord pick it up (reread + add)."""
        self._write_program(name, body)
        rpc = self.rpc()
        try:
            rpc.reloadConfig()
        except xmlrpc.client.Fault:
            (self.conf_dir / f"{name}.conf").unlink()  # or every later reread fails on it
            raise
        self._programs[name] = body
        rpc.addProcessGroup(name)

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN_DIR / "supervisorctl"), "-c", str(self.conf_path), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def log_tail(self, nbytes: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-nbytes:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Shut supervisord and every child down; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None:
            # Stop every program at once first: shutdown alone stops groups one by one.
            with contextlib.suppress(OSError, http.client.HTTPException, xmlrpc.client.Error):
                self.rpc().stopAllProcesses(True)
            try:
                self.rpc().shutdown()
                proc.wait(timeout=20)
            except (OSError, http.client.HTTPException, xmlrpc.client.Error):
                pass  # not answering: killed below
            except subprocess.TimeoutExpired:
                pass  # shutting down too slowly: killed below
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for _ in range(50):  # a master may fork a new worker between two passes
            left = pids_with_env(self.env_marker)
            if not left:
                break
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        shutil.rmtree(self._sock_dir, ignore_errors=True)

    def __enter__(self) -> SupervisordProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def supervisord_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Generator[Callable[..., SupervisordProcess], None, None]:
    """Yield `make(programs=None, **kwargs)` starting supervisords; stop them all after."""
    started: list[SupervisordProcess] = []

    def make(programs: Mapping[str, str] | None = None, **kwargs: Any) -> SupervisordProcess:
        sv = SupervisordProcess(tmp_path_factory.mktemp("supervisord"), programs, **kwargs)
        started.append(sv)
        return sv.start()

    try:
        yield make
    finally:
        for sv in reversed(started):
            sv.stop()


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes containing `text` (to find leftovers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found
