"""The HTTP listener: forge webhooks, `watcher trigger`, `/healthz` and `/metrics` (DESIGN §6).

A valid push to the branch calls `on_hint(source)`, nothing else: the daemon coalesces hints
and reads the revision from git. 202 queued; 200 ignored; 400 malformed; 401 bad or missing
signature (checked before parsing; always 401 without a secret); 404; 405; 408 body too slow;
411 no Content-Length; 413 over `max_body`, from the headers alone; 431 a head over 16 KiB or
64 headers; 503 when no room is left. Sockets are served by one event loop (listener.py): no
client, however slow, holds another's turn. Rejections are logged at a bounded rate.
Secrets are read at each request, and never logged, nor are signatures or bodies.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable
from typing import Any

import structlog

from watcher.daemon import forges
from watcher.daemon.http_head import Head
from watcher.daemon.listener import Listener, Response
from watcher.daemon.metrics import CONTENT_TYPE, Metrics
from watcher.errors import ConfigError, TransientError
from watcher.log import register_secret

log = structlog.get_logger()

MAX_CLIENTS = 256  # connections at once; past it the oldest still sending its head is dropped
BODY_BUDGET = 16 * 1024 * 1024  # body bytes buffered at once, all connections together
_HOOK_PATHS = {f"/hooks/{forge}": forge for forge in forges.FORGES} | {"/trigger": "trigger"}
_LENGTH = re.compile(r"[0-9]{1,16}")
_STATUS = {"queued": 202, "ignored": 200, "malformed": 400, "unauthorized": 401}
_RESULTS = {202: "queued", 200: "ignored", 401: "unauthorized", 413: "too_large", 500: "error"}


def parse_listen(listen: str) -> tuple[str, int]:
    """Split `host:port` (`[::1]:9090` for IPv6); an empty host means loopback, not all."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address {listen!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Throttle:
    """At most `limit` lines per `window` s for an event a client can cause at will (401s,
    dropped clients); the rest are counted and summed up in one line when the next window
    opens."""

    def __init__(self, limit: int = 20, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self.opened, self.count, self.suppressed = -window, 0, 0

    def allow(self, event: str) -> bool:
        now = time.monotonic()
        if now - self.opened >= self.window:
            if self.suppressed:
                log.warning("webhook.lines_suppressed", event=event, count=self.suppressed,
                            window_s=self.window)
            self.opened, self.count, self.suppressed = now, 0, 0
        self.count += 1
        if self.count > self.limit:
            self.suppressed += 1
            return False
        return True


class _Routes:
    """What each request gets: the listener's App (see listener.py)."""

    def __init__(self, app: WebhookServer) -> None:
        self.app = app
        self.rejects, self.drops = _Throttle(), _Throttle()

    def admit(self, head: Head, client: str) -> Response | int:
        path = head.path
        if path in ("/healthz", "/metrics"):
            if head.method != "GET":
                return _json(405, {"status": "error", "reason": "method not allowed"}, "GET")
            return 0
        source = _HOOK_PATHS.get(path)
        if source is None:
            return _json(404, {"status": "error", "reason": "not found"})
        if head.method != "POST":
            return _json(405, {"status": "error", "reason": "method not allowed"}, "POST")
        lengths = head.get_all("Content-Length")
        if "Transfer-Encoding" in head or not lengths:
            return self._verdict(source, 411, "length_required", client)
        if len(set(lengths)) != 1 or not _LENGTH.fullmatch(lengths[0].strip()):
            return self._verdict(source, 400, "bad_content_length", client)
        if int(lengths[0]) > self.app.max_body:
            return self._verdict(source, 413, "too_large", client)
        return int(lengths[0])

    def respond(self, head: Head, body: bytes, client: str) -> Response:
        if head.path == "/metrics":
            return Response(200, self.app.metrics.render(), CONTENT_TYPE)
        if head.path == "/healthz":
            return self._health()
        source = _HOOK_PATHS[head.path]
        decision = forges.judge(source, dict(head.headers), body, self.app.key_for(source),
                                self.app.branch)
        if decision.outcome != "queued":
            return self._verdict(source, _STATUS[decision.outcome], decision.reason, client)
        try:
            self.app.on_hint(source)
        except Exception:
            log.exception("webhook.hint_failed", forge=source)
            return self._verdict(source, 500, "internal_error", client)
        return self._verdict(source, 202, "hint queued", client)

    def refuse(self, head: Head | None, status: int, reason: str, client: str) -> Response:
        source = _HOOK_PATHS.get(head.path) if head is not None else None
        if source is None:
            if self.rejects.allow("webhook.rejected"):
                log.warning("webhook.rejected", reason=reason, status=status, client=client)
            return _json(status, {"status": "error", "reason": reason})
        return self._verdict(source, status, reason, client)

    def gone(self, client: str, why: str) -> None:
        if self.drops.allow("webhook.client_gone"):
            log.info("webhook.client_gone", client=client, why=why)

    def busy(self) -> Response:
        return _json(503, {"status": "busy", "reason": "too many requests in progress"})

    def _verdict(self, source: str, status: int, reason: str, client: str) -> Response:
        result = _RESULTS.get(status, "malformed")
        self.app.metrics.webhook(source, result)
        if status < 300:
            log.info("webhook." + ("accepted" if status == 202 else "ignored"), forge=source,
                     reason=reason, status=status, client=client)
        elif self.rejects.allow("webhook.rejected"):
            log.warning("webhook.rejected", forge=source, reason=reason, status=status,
                        client=client)
        return _json(status, {"status": result, "reason": reason})

    def _health(self) -> Response:
        try:
            healthy, info = self.app.health_provider()
        except Exception:
            log.exception("webhook.health_provider_failed")
            healthy, info = False, {"error": "health provider failed"}
        return _json(200 if healthy else 503, info)


def _json(status: int, body: dict[str, Any], allow: str = "") -> Response:
    return Response(status, json.dumps(body, default=str).encode() + b"\n", allow=allow)


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
        self._listener: Listener | None = None

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
            self._listener = Listener(
                parse_listen(self.listen), _Routes(self), max_body=self.max_body,
                client_timeout=self.client_timeout, max_connections=self.max_clients,
                body_budget=BODY_BUDGET, on_busy=self._on_busy)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"[webhook] listen = {self.listen!r}: {exc}") from exc
        self._listener.start()
        log.info("webhook.listening", host=self.address[0], port=self.address[1])

    def _on_busy(self) -> None:
        log.warning("webhook.busy", max_clients=self.max_clients)

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise RuntimeError("the webhook server is not started")
        return self._listener.address

    def stop(self) -> None:
        """Stop accepting, close every connection and the socket, join the thread."""
        if self._listener is None:
            return
        self._listener.stop()
        self._listener = None


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
