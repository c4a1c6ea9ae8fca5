"""HTTP health check: poll a URL until it answers 200 (with the new sha when asked)."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from watcher.errors import StepFailed
from watcher.log import scrub

log = structlog.get_logger()


def wait_healthy(
    url: str,
    *,
    timeout: float,
    expect: str | None = None,
    interval: float = 0.5,
    step: str = "health",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Return the seconds it took; raise StepFailed with the last answer after `timeout`."""
    started = clock()
    deadline = started + timeout
    last = "no answer"
    import requests  # imported by the deploys that need it, not by every no-op check

    with requests.Session() as session:
        while True:
            per_try = max(0.5, min(5.0, deadline - clock()))
            try:
                resp = session.get(url, timeout=per_try, allow_redirects=False)
                body = resp.text[:2000]
                if resp.status_code == 200 and (not expect or expect in body):
                    return clock() - started
                if resp.status_code == 200:
                    last = f"200 but the body lacks revision {expect[:12] if expect else ''}"
                else:
                    last = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            if clock() + interval > deadline:
                raise StepFailed(step, f"{scrub(url)} unhealthy after {timeout:g}s: {last}")
            sleep(interval)
