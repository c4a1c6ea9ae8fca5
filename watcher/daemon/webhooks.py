"""The HTTP listener: forge webhooks, `watcher trigger`, `/healthz` and `/metrics` (DESIGN §6).

A valid push to the branch calls `on_hint(source)`, nothing else: the daemon coalesces hints
and reads the revision from git. 202 queued; 200 ignored; 400 malformed; 401 bad or missing
signature (checked before parsing; always 401 without a secret); 404; 405; 408 body too slow;
411 no Content-Length; 413 over `max_body`, from the headers alone; 503 over `max_clients`.
Secrets are read at each request, and never logged, nor are signatures or bodies.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from watcher.daemon import forges
from watcher.daemon.metrics import CONTENT_TYPE, Metrics
from watcher.errors import ConfigError, TransientError
from watcher.log import register_secret

log = structlog.get_logger()

MAX_CLIENTS = 32  # requests in progress; forges send one hook per push, and Nginx buffers
_HOOK_PATHS = {f"/hooks/{forge}": forge for forge in forges.FORGES} | {"/trigger": "trigger"}
_LENGTH = re.compile(r"[0-9]{1,16}")
_STATUS = {"queued": 202, "ignored": 200, "malformed": 400, "unauthorized": 401}
_RESULTS = {202: "queued", 200: "ignored", 401: "unauthorized", 413: "too_large", 500: "error"}
_BUSY = b'{"status": "busy", "reason": "too many requests in progress"}\n'
_BUSY_RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n" + (
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY), _BUSY))


def parse_listen(listen: str) -> tuple[str, int]:
    """Split `host:port` (`[::1]:9090` for IPv6); an empty host means loopback, not all."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address {listen!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Deadline(io.RawIOBase):
    """The socket, readable for `timeout` s in all: a byte a second cannot hold a thread."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock, self._deadline = sock, time.monotonic() + timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _HTTPServer(ThreadingHTTPServer):
    """A thread per request, at most `max_clients` at once."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: WebhookServer, max_clients: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self._slots, self._busy = threading.BoundedSemaphore(max_clients), False
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # in the accept loop: must not block
            if not self._busy:  # once per busy spell, not once per refused connection
                log.warning("webhook.busy", max_clients=self.app.max_clients)
            self._busy = True
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(_BUSY_RESPONSE)
                request.recv(65536)  # what already arrived, so close() sends no reset
            self.shutdown_request(request)
            return
        self._busy = False
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.error("webhook.handler_crashed", client=str(client_address[0]), exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "watcher"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the buffered makefile() is replaced by one with a deadline
        self.rfile = io.BufferedReader(_Deadline(self.connection, self.server.app.client_timeout))
        self._consumed = False

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's stderr lines; the structlog events below replace them."""

    def handle_expect_100(self) -> bool:
        return True  # deferred to `_post`: a 413 must go out without inviting the body

    def handle_one_request(self) -> None:
        self.close_connection = True  # one request per connection: idle clients hold no slot
        try:
            self.raw_requestline = self.rfile.readline(65537)  # longer: cut, then 400 or 404
            if self.raw_requestline and self.parse_request():
                self._dispatch()
        except (TimeoutError, ConnectionError) as exc:
            log.info("webhook.client_gone", client=self.client_address[0], why=type(exc).__name__)

    def _dispatch(self) -> None:
        path, app = self.path.split("?", 1)[0], self.server.app
        source = _HOOK_PATHS.get(path)
        if path in ("/healthz", "/metrics"):
            if self.command != "GET":
                self._reply(405, {"status": "error", "reason": "method not allowed"}, allow="GET")
            elif path == "/metrics":
                self._reply(200, app.metrics.render(), CONTENT_TYPE)
            else:
                self._health()
        elif source is None:
            self._reply(404, {"status": "error", "reason": "not found"})
        elif self.command != "POST":
            self._reply(405, {"status": "error", "reason": "method not allowed"}, allow="POST")
        else:
            status, reason = self._post(source)
            result = _RESULTS.get(status, "malformed")
            app.metrics.webhook(source, result)
            event = "webhook." + {202: "accepted", 200: "ignored"}.get(status, "rejected")
            say = log.info if status < 300 else log.warning
            say(event, forge=source, reason=reason, status=status, client=self.client_address[0])
            self._reply(status, {"status": result, "reason": reason})
        declared = self.headers.get("Content-Length", "0").strip() not in ("", "0")
        if not self._consumed and (declared or "Transfer-Encoding" in self.headers):
            self._linger()

    def _post(self, source: str) -> tuple[int, str]:
        app = self.server.app
        lengths = self.headers.get_all("Content-Length") or []
        if "Transfer-Encoding" in self.headers or not lengths:
            return 411, "length_required"
        if len(set(lengths)) != 1 or not _LENGTH.fullmatch(lengths[0].strip()):
            return 400, "bad_content_length"
        if int(lengths[0]) > app.max_body:
            return 413, "too_large"
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        self._consumed = True
        try:  # exactly the declared length; the reader's deadline bounds the wait
            body = self.rfile.read(int(lengths[0]))
        except TimeoutError:
            return 408, "body_timeout"
        if len(body) < int(lengths[0]):
            return 400, "body_shorter_than_content_length"
        headers = dict(self.headers.items())
        decision = forges.judge(source, headers, body, app.key_for(source), app.branch)
        if decision.outcome != "queued":
            return _STATUS[decision.outcome], decision.reason
        try:
            app.on_hint(source)
        except Exception:
            log.exception("webhook.hint_failed", forge=source)
            return 500, "internal_error"
        return 202, "hint queued"

    def _linger(self) -> None:
        """Half-close, drop what the client sent (for a second at most) so it reads our answer
        rather than a reset caused by unread data."""
        sock, limit, end = self.connection, self.server.app.max_body, time.monotonic() + 1.0
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.2)
            while time.monotonic() < end and limit > 0 and (chunk := sock.recv(65536)):
                limit -= len(chunk)

    def _health(self) -> None:
        try:
            healthy, info = self.server.app.health_provider()
        except Exception:
            log.exception("webhook.health_provider_failed")
            healthy, info = False, {"error": "health provider failed"}
        self._reply(200 if healthy else 503, info)

    def _reply(self, status: int, body: dict[str, Any] | bytes,
               content_type: str = "application/json", allow: str = "") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, default=str).encode() + b"\n"
        self.connection.settimeout(self.server.app.client_timeout)  # not the reader's leftover
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class WebhookServer:
    """The listener behind `[webhook] listen`; `start()` serves in daemon threads."""

    def __init__(
        self, listen: str, branch: str, secret_provider: Callable[[], bytes | None],
        on_hint: Callable[[str], None], health_provider: Callable[[], tuple[bool, dict[str, Any]]],
        metrics: Metrics, trigger_key_provider: Callable[[], bytes | None],
        max_body: int = 1024 * 1024, client_timeout: float = 10.0, max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.listen, self.branch, self.metrics = listen, branch, metrics
        self.on_hint, self.health_provider = on_hint, health_provider
        self.max_body, self.client_timeout, self.max_clients = max_body, client_timeout, max_clients
        self._providers = {"webhook secret": secret_provider, "trigger key": trigger_key_provider}
        self._warned: set[str] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def key_for(self, source: str) -> bytes:
        """The current secret (or trigger key), stripped; empty when none is configured."""
        what = "trigger key" if source == "trigger" else "webhook secret"
        try:
            key = (self._providers[what]() or b"").strip()
        except Exception as exc:  # an unreadable secret file refuses, never opens
            log.error("webhook.secret_unreadable", what=what, error=type(exc).__name__)
            key = b""
        if key:
            register_secret(key.decode("utf-8", "replace"))  # log.py blanks it wherever it shows
            self._warned.discard(what)
        elif what not in self._warned:  # once, and again only after a secret came and went
            self._warned.add(what)
            log.warning("webhook.no_secret", what=what, effect="every request answered 401")
        return key

    def start(self) -> None:
        """Bind `listen` (port 0 picks a free one) and serve in a daemon thread."""
        try:
            self._httpd = _HTTPServer(parse_listen(self.listen), self, self.max_clients)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"[webhook] listen = {self.listen!r}: {exc}") from exc
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="watcher-webhooks", daemon=True)
        self._thread.start()
        log.info("webhook.listening", host=self.address[0], port=self.address[1])

    @property
    def address(self) -> tuple[str, int]:
        if self._httpd is None:
            raise RuntimeError("the webhook server is not started")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Stop accepting, close the socket, join the threads; requests in flight end alone."""
        if self._httpd is None or self._thread is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = self._thread = None


def send_trigger(listen: str, key: bytes, timeout: float = 5.0) -> int:
    """Ask the daemon at `listen` to check now (`watcher trigger`); returns the HTTP status."""
    host, port = parse_listen(listen)  # 0.0.0.0 and :: reach the local host on Linux
    body = json.dumps({"source": "watcher trigger", "at": time.time()}).encode()
    headers = {"Content-Type": "application/json",
               "X-Signature": "sha256=" + forges.sign(key.strip(), body)}
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/trigger", body=body, headers=headers)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        why = f"the watcher daemon did not answer at {host}:{port} ({exc}); is `watcher run` up?"
        raise TransientError(why) from exc
    finally:
        conn.close()
