"""Real MariaDB, Redis and SMTP servers for tests, each a child of the test run in a temp dir.

    db = MariaDB(tmp / "db").start()          # Debian's mariadbd, unix socket only
    db.create_database("mysite", "mysite", password)
    db.sql("SELECT COUNT(*) FROM mysite.pages_visit")   # as root, over the socket
    redis = Redis(tmp / "redis").start()      # redis-server --port 0 --unixsocket ...
    redis.cli("GET", "key")
    with SMTPServer(users={"u": "pw"}, tls_dir=tmp) as smtp:   # aiosmtpd on 127.0.0.1
        smtp.messages                          # every accepted message

`stop()` is safe to call twice and kills what does not stop in time. Unix socket paths are
limited to ~107 bytes: give these short directories (under /tmp).
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import shutil
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from support.supervisord import free_port


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not found:
        raise RuntimeError(f"{name} not found: run `make system-deps` (scripts/system-deps.sh)")
    return found


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class MariaDB:
    """A throw-away MariaDB server: its own datadir, a unix socket, no TCP port."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.datadir = directory / "data"
        self.socket = directory / "mysql.sock"
        self.log = directory / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> MariaDB:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.datadir.exists():
            subprocess.run(
                [_binary("mariadb-install-db"), "--no-defaults", f"--datadir={self.datadir}",
                 "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"],
                capture_output=True, check=True, timeout=120)
        self.proc = subprocess.Popen(
            [_binary("mariadbd"), "--no-defaults", f"--datadir={self.datadir}",
             f"--socket={self.socket}", "--skip-networking", "--user=root",
             f"--pid-file={self.dir / 'mariadbd.pid'}", f"--log-error={self.log}",
             "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0",
             "--performance-schema=OFF"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited at start: {self.log_tail()}")
            if self.socket.exists() and self._client("SELECT 1", check=False).returncode == 0:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mariadbd did not come up: {self.log_tail()}")
            time.sleep(0.1)

    def _client(self, statements: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # SQL on stdin, not in argv: a password in it would show in `ps` and in errors.
        res = subprocess.run(
            [_binary("mariadb"), "--no-defaults", f"--socket={self.socket}", "--user=root",
             "--batch", "--skip-column-names"],
            input=statements, capture_output=True, text=True, timeout=60, check=False)
        if check and res.returncode != 0:
            raise RuntimeError(f"mariadb client failed: {res.stderr.strip()}")
        return res

    def sql(self, statements: str) -> str:
        """Run SQL as root; the tab-separated rows it prints."""
        return self._client(statements).stdout.strip()

    def create_database(self, name: str, user: str, password: str) -> None:
        """A utf8mb4 database and a user allowed everything in it, from localhost only."""
        quoted = password.replace("\\", "\\\\").replace("'", "\\'")
        self.sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;\n"
                 f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{quoted}';\n"
                 f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'localhost';\n")

    def log_tail(self, nbytes: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-nbytes:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _stop(proc)


class Redis:
    """A throw-away redis-server on a unix socket only, nothing persisted."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.socket = directory / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self, timeout: float = 20) -> Redis:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [_binary("redis-server"), "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"),
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited at start")
            if self.socket.exists() and self.cli("PING") == "PONG":
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not come up")
            time.sleep(0.05)

    def cli(self, *args: str) -> str:
        res = subprocess.run([_binary("redis-cli"), "-s", str(self.socket), *args],
                             capture_output=True, text=True, timeout=30, check=False)
        return res.stdout.strip()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _stop(proc)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem) for CN=localhost, valid for 127.0.0.1 too; made by openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [_binary("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        capture_output=True, check=True, timeout=60)
    return cert, key


@dataclass(frozen=True)
class Mail:
    """One accepted message: the envelope, the parsed message, and how it came in."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: email.message.EmailMessage
    login: str | None  # the AUTH user name, None without AUTH
    tls: bool  # whether the session had done STARTTLS

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return str(part.get_content()) if part is not None else ""


class SMTPServer:
    """aiosmtpd on `host` (127.0.0.1):<free port>, accepting AUTH (PLAIN/LOGIN) for `users`.

    With `tls_dir`, it offers STARTTLS with a fresh self-signed certificate (`cert` names its
    file, for SSL_CERT_FILE) and refuses AUTH before it; without, AUTH is allowed in clear
    (loopback only). `reject` makes every DATA fail with that reply ("451 ..." or "554 ...").
    """

    def __init__(self, users: dict[str, str] | None = None, tls_dir: Path | None = None,
                 host: str = "127.0.0.1") -> None:
        self.host = host
        self.users = dict(users or {})
        self.port = free_port()
        self.messages: list[Mail] = []
        self.auth_attempts: list[tuple[str, bool]] = []  # (user, accepted)
        self.reject = ""
        self.cert: Path | None = None
        self._lock = threading.Lock()
        context = None
        if tls_dir is not None:
            self.cert, key = self_signed_cert(tls_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cert, key)
        server = self

        class Handler:
            async def handle_DATA(self, smtp: SMTP, session: Session,
                                  envelope: Envelope) -> str:
                return server._accept(session, envelope)

        self._controller = Controller(
            Handler(), hostname=host, port=self.port, tls_context=context,
            authenticator=self._authenticate, auth_require_tls=context is not None,
            server_hostname="localhost", ready_timeout=10)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def _authenticate(self, smtp: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode()
        ok = self.users.get(user) == auth_data.password.decode()
        with self._lock:
            self.auth_attempts.append((user, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _accept(self, session: Session, envelope: Envelope) -> str:
        if self.reject:
            return self.reject
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        with self._lock:
            self.messages.append(Mail(
                mail_from=str(envelope.mail_from), rcpt_tos=tuple(envelope.rcpt_tos), raw=raw,
                message=message, login=login, tls=session.ssl is not None))
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 10) -> list[Mail]:
        """The messages once there are at least `count` (or whatever came within `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    break
            time.sleep(0.05)
        with self._lock:
            return list(self.messages)

    def start(self) -> SMTPServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(AssertionError, RuntimeError):  # not running: nothing to do
            self._controller.stop()

    def __enter__(self) -> SMTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
