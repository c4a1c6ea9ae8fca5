"""The webhook listener's sockets: one thread, one selector, every client in it.

No client can hold another's turn: a connection costs a selector entry and a buffer, not a
thread, so stalled or trickling clients cannot starve a valid hook or `/healthz`. Bounds:
the head is at most `MAX_HEAD_BYTES` (431 past it); the whole request must arrive within
`client_timeout` (a head that does not is dropped, a body that does not gets 408); at most
`max_connections` at once, past which the oldest still sending its head is dropped; bodies
buffered at once at most `body_budget` bytes, past which the oldest body still arriving gets
503. Each connection carries one request; after the answer the server half-closes and drops
what the client still sends for a second, so the client reads the answer, not a reset.

The app's callbacks run on this thread and must not block (they set an event, read a small
file, render metrics).
"""

from __future__ import annotations

import contextlib
import http
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from watcher.daemon.http_head import MAX_HEAD_BYTES, Head, HeadError, head_end, parse_head

DRAIN_S = 1.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    allow: str = ""

    def encode(self, method: str) -> bytes:
        phrase = http.HTTPStatus(self.status).phrase
        head = [f"HTTP/1.1 {self.status} {phrase}", "Server: watcher",
                f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}",
                "Connection: close"]
        if self.status == 503:
            head.append("Retry-After: 1")
        if self.allow:
            head.append(f"Allow: {self.allow}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        return data if method == "HEAD" else data + self.body


class App(Protocol):
    def admit(self, head: Head, client: str) -> Response | int:
        """An answer from the head alone, or the body length to read first."""

    def respond(self, head: Head, body: bytes, client: str) -> Response:
        """The answer to a whole request."""

    def refuse(self, head: Head | None, status: int, reason: str, client: str) -> Response:
        """The answer to a request refused by the listener (bad head, slow or short body)."""

    def gone(self, client: str, why: str) -> None:
        """A client dropped before a whole head arrived."""

    def busy(self) -> Response:
        """The answer when no room is left."""


class _Conn:
    def __init__(self, sock: socket.socket, client: str, now: float, timeout: float) -> None:
        self.sock, self.client = sock, client
        self.started, self.deadline = now, now + timeout
        self.phase = "head"  # head -> body -> write -> drain
        self.buf = bytearray()
        self.head: Head | None = None
        self.need = 0
        self.out = memoryview(b"")
        self.drain_left = 0


class Listener:
    def __init__(self, address: tuple[str, int], app: App, *, max_body: int,
                 client_timeout: float, max_connections: int, body_budget: int,
                 on_busy: Callable[[], None]) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(address)
            self.sock.listen(128)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.app, self.max_body, self.timeout = app, max_body, client_timeout
        self.max_connections, self.on_busy = max_connections, on_busy
        self.body_budget = max(body_budget, max_body)
        self.reserved = 0
        self.conns: dict[int, _Conn] = {}
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = self._busy = False
        self.thread = threading.Thread(target=self._serve, name="watcher-webhooks", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self.thread.join(timeout=5)
        for conn in list(self.conns.values()):
            self._close(conn)
        self.sel.close()
        for s in (self.sock, self._wake_r, self._wake_w):
            s.close()

    # -- the loop -------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stopping:
            for key, mask in self.sel.select(timeout=0.1):
                if key.data is None:
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                elif key.data.sock.fileno() in self.conns:
                    self._event(key.data, mask)
            now = time.monotonic()
            for conn in [c for c in self.conns.values() if c.deadline <= now]:
                self._expire(conn)

    def _event(self, conn: _Conn, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self._write(conn)
            elif mask & selectors.EVENT_READ:
                self._read(conn)
        except OSError:  # reset by the client, or gone: nothing to answer
            self._close(conn)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of fds, aborted: the next round retries
                return
            sock.setblocking(False)
            if len(self.conns) >= self.max_connections and not self._evict_oldest("head"):
                if not self._busy:  # once per busy spell, not once per refused connection
                    self.on_busy()
                self._busy = True
                with contextlib.suppress(OSError):
                    sock.send(self.app.busy().encode("GET"))
                    sock.recv(65536)  # what already arrived, so close() sends no reset
                sock.close()
                continue
            self._busy = False
            conn = _Conn(sock, str(addr[0]), time.monotonic(), self.timeout)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _evict_oldest(self, phase: str) -> bool:
        waiting = [c for c in self.conns.values() if c.phase == phase]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.started)
        if phase == "head":
            self.app.gone(oldest.client, "evicted")
            self._close(oldest)
        else:
            self._answer(oldest, self.app.busy())
        return True

    # -- reading --------------------------------------------------------------------------
    def _read(self, conn: _Conn) -> None:
        if conn.phase == "drain":
            chunk = conn.sock.recv(65536)
            conn.drain_left -= len(chunk)
            if not chunk or conn.drain_left <= 0:
                self._close(conn)
            return
        want = 4096 if conn.phase == "head" else min(65536, conn.need - len(conn.buf))
        chunk = conn.sock.recv(want)
        if not chunk:
            if conn.phase == "body":
                self._answer(conn, self.app.refuse(conn.head, 400,
                                                   "body_shorter_than_content_length",
                                                   conn.client))
            else:
                self._close(conn)
            return
        conn.buf += chunk
        if conn.phase == "head":
            self._got_head_bytes(conn)
        elif len(conn.buf) >= conn.need:
            self._got_body(conn)

    def _got_head_bytes(self, conn: _Conn) -> None:
        end = head_end(conn.buf)
        if end is None:
            if len(conn.buf) > MAX_HEAD_BYTES:
                self._answer(conn, self.app.refuse(None, 431, "request_head_too_large",
                                                   conn.client))
            return
        try:
            head = parse_head(conn.buf[:end])
        except HeadError as exc:
            self._answer(conn, self.app.refuse(None, exc.status, exc.reason, conn.client))
            return
        conn.head, rest = head, conn.buf[end:]
        verdict = self.app.admit(head, conn.client)
        if isinstance(verdict, Response):
            self._answer(conn, verdict)
            return
        if verdict == 0:
            self._answer(conn, self.app.respond(head, b"", conn.client))
            return
        while self.reserved + verdict > self.body_budget and self._evict_oldest("body"):
            pass
        self.reserved += verdict
        conn.phase, conn.need, conn.buf = "body", verdict, bytearray(rest[:verdict])
        if head.get("Expect").lower() == "100-continue" and not rest:
            conn.sock.send(_CONTINUE)  # 25 bytes into an empty send buffer
        if len(conn.buf) >= conn.need:
            self._got_body(conn)

    def _got_body(self, conn: _Conn) -> None:
        head, body = conn.head, bytes(conn.buf[:conn.need])
        self._release(conn)
        if head is not None:  # always: the body phase starts from a parsed head
            self._answer(conn, self.app.respond(head, body, conn.client))

    def _expire(self, conn: _Conn) -> None:
        if conn.phase == "head":
            self.app.gone(conn.client, "head_timeout")
            self._close(conn)
        elif conn.phase == "body":
            self._answer(conn, self.app.refuse(conn.head, 408, "body_timeout", conn.client))
        else:
            self._close(conn)

    # -- writing --------------------------------------------------------------------------
    def _answer(self, conn: _Conn, response: Response) -> None:
        self._release(conn)
        method = conn.head.method if conn.head else "GET"
        conn.phase, conn.buf = "write", bytearray()
        conn.out = memoryview(response.encode(method))
        conn.deadline = time.monotonic() + self.timeout
        self.sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        try:
            self._write(conn)
        except BlockingIOError:
            pass  # the selector says when the socket can take more
        except OSError:
            self._close(conn)

    def _write(self, conn: _Conn) -> None:
        sent = conn.sock.send(conn.out)
        conn.out = conn.out[sent:]
        if conn.out:
            return
        conn.sock.shutdown(socket.SHUT_WR)
        conn.phase, conn.drain_left = "drain", self.max_body
        conn.deadline = time.monotonic() + DRAIN_S
        self.sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _release(self, conn: _Conn) -> None:
        if conn.phase == "body":
            self.reserved -= conn.need
            conn.phase = "answered"

    def _close(self, conn: _Conn) -> None:
        self._release(conn)
        self.conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        conn.sock.close()
