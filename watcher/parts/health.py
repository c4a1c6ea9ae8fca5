"""HTTP health check: poll a URL until it answers 200 (with the new sha when asked), and give
up early when the new release keeps failing (DESIGN §2 step 12, `health.failures`).

Every answer falls in one of three kinds:

- healthy: 200, and the body names the new sha when one is expected: the wait ends.
- counted: a 5xx from the new release. With an expected sha, a 5xx whose body does not name
  the old sha (`old`); without one, any 5xx (the wait starts after the reload, so the old
  release is gone or going). `failures` counted answers in a row end the wait at once.
- not ready yet: a refused or timed-out connection, or the old release still answering
  (its sha in the body): the wait goes on up to `timeout` and the streak is left as it is,
  since these are not answers from the new release.

Anything else from the new release (a 404, a 200 without the sha) is a failure that does not
count, and breaks a streak; the wait goes on up to `timeout`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from watcher.errors import StepFailed
from watcher.log import scrub

log = structlog.get_logger()
# After a counted answer the next try comes this soon (or after `interval`, if shorter): a
# release that fails every request is rolled back in well under a second, while one 5xx
# among slow starts costs nothing.
RETRY_AFTER_COUNTED_S = 0.05


def classify(status: int, body: str, expect: str | None, old: str | None) -> str:
    """"healthy", "counted", "old" (not ready yet) or "bad" (new release, not counted)."""
    if status == 200 and (not expect or expect in body):
        return "healthy"
    if old and old in body:
        return "old"
    if status >= 500:
        return "counted"
    return "bad"


def wait_healthy(
    url: str,
    *,
    timeout: float,
    expect: str | None = None,
    old: str | None = None,
    failures: int = 0,
    interval: float = 0.5,
    step: str = "health",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    down: Callable[[], str] | None = None,
) -> float:
    """Return the seconds it took; raise StepFailed with the last answer after `timeout`, or
    as soon as `failures` (0 = never) counted answers came in a row. `down`, asked after each
    try that found no server: why the program being waited for is gone ("" while it runs or
    starts), which ends the wait at once (a release whose app cannot be imported).
    """
    started = clock()
    deadline = started + timeout
    last = "no answer"
    streak = 0
    import requests  # imported by the deploys that need it, not by every no-op check

    with requests.Session() as session:
        while True:
            per_try = max(0.5, min(5.0, deadline - clock()))
            pause = interval
            try:
                resp = session.get(url, timeout=per_try, allow_redirects=False)
                body = resp.text[:2000]
                kind = classify(resp.status_code, body, expect, old)
                if kind == "healthy":
                    return clock() - started
                if kind == "old":
                    last = f"HTTP {resp.status_code} from the old release"
                elif resp.status_code == 200:
                    last = f"200 but the body lacks revision {expect[:12] if expect else ''}"
                else:
                    last = f"HTTP {resp.status_code}"
                if kind == "counted":
                    streak += 1
                    pause = min(interval, RETRY_AFTER_COUNTED_S)
                    if failures and streak >= failures:
                        log.warning("health.failing", url=scrub(url), answers=streak,
                                    seconds=round(clock() - started, 2))
                        raise StepFailed(step, f"{scrub(url)} failed {streak} times in a row "
                                         f"after {clock() - started:.1f}s: {last}")
                elif kind == "bad":
                    streak = 0
            except requests.RequestException as exc:
                last = type(exc).__name__
                gone = down() if down is not None else ""
                if gone:
                    raise StepFailed(step, f"{scrub(url)} never answered: {gone}") from None
            if clock() + pause > deadline:
                raise StepFailed(step, f"{scrub(url)} unhealthy after {timeout:g}s: {last}")
            sleep(pause)
