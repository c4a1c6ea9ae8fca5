"""A real HTTP server on 127.0.0.1 standing in for a logging API (json, Slack, Better Stack,
Datadog: it accepts any path and any body).

    with LogAPI() as api:          # a free port; shuts down on exit (or after `lifetime_s`)
        url = api.url              # "http://127.0.0.1:<port>/ingest" (any path is accepted)
        api.mode = "5xx"           # how it answers from now on, see below
        api.refuse(); api.accept() # close the listening socket (connections refused); rebind
        api.requests               # every request so far: list[Received], oldest first
        api.delivered_ids()        # report ids of the 2xx-answered requests, in order

Modes: "ok" answers 202; "5xx" 503; "401" 401; "slow" holds the request `slow_s` seconds
(longer than the client's timeout) and closes without answering (recorded with status 0);
any other three-digit string ("400", "429"...) answers that status.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("ok", "5xx", "401", "slow")


@dataclass(frozen=True)
class Received:
    """One request as the server saw it; `headers` keys are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any  # the parsed body, or None when it is not JSON
    status: int  # what the server answered


def _report_id(doc: Any) -> str | None:
    """The report id inside any of the four formats (json, betterstack, datadog, slack)."""
    if isinstance(doc, list) and doc:
        doc = doc[0]
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("watcher"), dict):
        doc = doc["watcher"]
    if isinstance(doc.get("id"), str):
        return str(doc["id"])
    for block in doc.get("blocks", []):  # slack: "id <id>" in the context block
        for element in block.get("elements", []):
            words = str(element.get("text", "")).split()
            if "id" in words:
                return words[words.index("id") + 1]
    return None


class LogAPI:
    """The server; see the module docstring. Thread-safe; not reusable after `close()`."""

    def __init__(self, mode: str = "ok", slow_s: float = 2.0, lifetime_s: float = 120.0) -> None:
        self._mode = "ok"
        self.mode = mode
        self.slow_s = slow_s
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._closed = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._bind()
        self._timer = threading.Timer(lifetime_s, self.close)  # stops itself if a test forgets
        self._timer.daemon = True
        self._timer.start()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES and not (mode.isdigit() and len(mode) == 3):
            raise ValueError(f"unknown mode {mode!r}: one of {MODES} or a status like '400'")
        self._mode = mode

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def delivered_ids(self) -> list[str | None]:
        """Report ids of the requests answered 2xx, in arrival order."""
        return [_report_id(r.json) for r in self.requests if 200 <= r.status < 300]

    def refuse(self) -> None:
        """Close the listening socket: new connections are refused until `accept()`."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def accept(self) -> None:
        """Listen again on the same port."""
        if self._server is None and not self._closed.is_set():
            self._bind()

    def close(self) -> None:
        self._closed.set()
        self._timer.cancel()
        self.refuse()

    def __enter__(self) -> LogAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bind(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                api._handle(self)

            do_GET = do_PUT = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest output clean

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True  # rebind the same port at once after refuse()
            daemon_threads = True

        server = Server(("127.0.0.1", self.port), Handler)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, daemon=True, kwargs={"poll_interval": 0.05}
        )
        self._thread.start()

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        mode = self.mode
        fixed = {"ok": 202, "5xx": 503, "401": 401, "slow": 0}
        status = fixed[mode] if mode in fixed else int(mode)  # "slow" is 0: falsy
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        headers = {k.lower(): v for k, v in req.headers.items()}
        with self._lock:
            self._received.append(Received(req.command, req.path, headers, body, parsed, status))
        if mode == "slow":
            self._closed.wait(self.slow_s)
            req.close_connection = True
            return
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", "2")
            req.end_headers()
            req.wfile.write(b"{}")
        except OSError:
            pass  # the client gave up (timeout): that is what "slow" is for
