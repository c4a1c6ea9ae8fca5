"""A bounded Python load generator for the zero-downtime tests: steady GETs (or POSTs) from
a few threads over keep-alive connections, every answer that is not a 200 counted as failed.

    load = Load(nginx.url + "/healthz", rate=120).start()
    ...  # deploy
    result = load.stop()   # result.failed, result.errors, result.bodies, result.p99(),
                           # result.server_errors (times of 5xx answers), result.window()
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # "HTTP 502" / exception name -> n
    bodies: dict[str, int] = field(default_factory=dict)  # distinct 200 bodies -> n
    latencies: list[float] = field(default_factory=list)
    server_errors: list[float] = field(default_factory=list)  # when each 5xx answer came

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def window(self) -> float:
        """Seconds from the first 5xx answer to the last (0 with none or one)."""
        return max(self.server_errors) - min(self.server_errors) if self.server_errors else 0.0

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


class Load:
    """Steady GETs of `url` at about `rate` per second from `threads` threads over keep-alive
    connections (a fresh one after any error), until `stop()`, `max_seconds` or
    `max_requests`. Every request that is not a 200 counts as failed."""

    def __init__(self, url: str, rate: float = 150, threads: int = 4,
                 max_seconds: float = 60, max_requests: int = 10_000,
                 method: str = "GET") -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path or "/"
        self.method = method  # POST: steady writes (the example app's /write)
        self.interval = threads / rate
        self.deadline = time.monotonic() + max_seconds
        self.budget = max_requests // threads
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        return self.result

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        for _ in range(self.budget):
            if self._stop.is_set() or time.monotonic() > self.deadline:
                break
            started = time.monotonic()
            error, body = "", ""
            try:
                conn = conn or http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request(self.method, self.path)
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace").strip()
                if resp.status != 200:
                    error = f"HTTP {resp.status}"
            except (OSError, http.client.HTTPException) as exc:
                error = type(exc).__name__
            if error and conn is not None:
                conn.close()
                conn = None
            self._record(error, body, time.monotonic() - started)
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()

    def _record(self, error: str, body: str, latency: float) -> None:
        with self._lock:
            r = self.result
            r.latencies.append(latency)
            if error.startswith("HTTP 5"):
                r.server_errors.append(time.monotonic())
            if error:
                r.failed += 1
                r.errors[error] = r.errors.get(error, 0) + 1
            else:
                r.ok += 1
                r.bodies[body] = r.bodies.get(body, 0) + 1
