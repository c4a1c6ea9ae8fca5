"""Steady load through Nginx with Debian's `wrk`, paced by a Lua `delay()` to ~`rate` req/s.

wrk (4.x) has no rate option; each of `connections` keep-alive connections waits
`connections / rate` seconds between its requests. Latency is wrk's own (send to response,
the pacing delay excluded). Failed = non-2xx/3xx answers + socket errors of every kind.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACE = "local d = tonumber(os.getenv('WRK_DELAY_MS'))\nfunction delay() return d end\n"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    failed: int
    p99_ms: float
    rate: float
    raw: str


def available() -> bool:
    return shutil.which("wrk") is not None


class Wrk:
    """`wrk` running in the background until `stop()` (SIGINT: wrk stops and reports)."""

    def __init__(self, url: str, rate: float = 200, connections: int = 10,
                 max_seconds: int = 180) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="wrk"))
        script = self._dir / "pace.lua"
        script.write_text(PACE)
        delay_ms = max(1, round(connections / rate * 1000))
        self.proc = subprocess.Popen(
            ["wrk", "-t2", f"-c{connections}", f"-d{max_seconds}s", "--latency", "-s",
             str(script), url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={"WRK_DELAY_MS": str(delay_ms), "PATH": "/usr/bin:/bin"},
        )

    def stop(self) -> WrkResult:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)
        return parse(out)


def parse(out: str) -> WrkResult:
    m = re.search(r"(\d+) requests in", out)
    if not m:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    requests = int(m.group(1))
    failed = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        failed += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        failed += int(non2xx.group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s|m)\b", out)
    p99_ms = float(p99.group(1)) * _UNITS[p99.group(2)] if p99 else float("nan")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return WrkResult(requests, failed, p99_ms, float(rate.group(1)) if rate else 0.0, out)
