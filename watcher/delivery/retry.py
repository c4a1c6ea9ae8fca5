"""One retry policy and one error type for every transport (the logging API, the email API,
SMTP, forge statuses).

A transport's single attempt raises `Retry` (the same request may pass later: a connection
error, a timeout, a 5xx or 429), `Rejected` (this document never will: the receiver refused
its body) or `Failed` (the endpoint or credentials are wrong: keep the document spooled).
`with_retries` repeats an attempt with jittered exponential backoff (tenacity) within a
deadline. Messages are safe to log: no token, no URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from watcher.log import register_secret

_log = structlog.get_logger("watcher.delivery")

# What a delivery came to, as the outbox reads it.
Delivered = Literal["sent", "rejected", "failed"]
# HTTP statuses that refuse the body, not the endpoint: resending the same document cannot help.
PAYLOAD_STATUSES = frozenset({400, 413, 415, 422})


class Failed(Exception):
    """Not delivered now; the document stays spooled. The message is safe to log."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float = 0) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class Retry(Failed):
    """The same request may pass later."""


class Rejected(Failed):
    """The receiver refused this document for good."""


def classify_status(status: int, retry_after: str = "") -> None:
    """Raise for a non-2xx HTTP status: Retry (429, 5xx), Rejected (the body), else Failed."""
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500:
        after = int(retry_after) if retry_after.isdigit() else 0  # an HTTP date is ignored
        raise Retry(f"HTTP {status}", status, after)
    if status in PAYLOAD_STATUSES:
        raise Rejected(f"HTTP {status}", status)
    raise Failed(f"HTTP {status}", status)  # 3xx, 401, 403, 404: the endpoint or token


def with_retries(attempt: Callable[[float], None], *, deadline: float, max_attempts: int,
                 floor: float = 0.25,
                 on_retry: Callable[[Failed, int], None] | None = None) -> int:
    """Call `attempt(remaining_seconds)` until it returns, raises a non-Retry error, has run
    `max_attempts` times, or fewer than `floor` seconds are left; attempts made. The last
    error is raised as it is."""
    jitter = wait_random_exponential(multiplier=0.5, max=8)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        delay = max(jitter(state), getattr(exc, "retry_after", 0))
        return max(0.0, min(delay, deadline - time.monotonic() - floor))

    def stop(state: RetryCallState) -> bool:
        return state.attempt_number >= max_attempts or deadline - time.monotonic() < floor

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if on_retry is not None and isinstance(exc, Failed):
            on_retry(exc, state.attempt_number)

    attempts = 0
    for retrying in Retrying(stop=stop, wait=wait, before_sleep=before_sleep, reraise=True,
                             retry=retry_if_exception_type(Retry)):
        with retrying:
            attempts += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Failed("time budget used up")
            attempt(remaining)
    return attempts


def read_token(path: str, key: str) -> str:
    """The token in `key`'s file, read at each send (rotation needs no restart) and
    registered with the scrubber; "" when no file is set. Failed when it cannot serve."""
    if not path:
        return ""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError) as exc:
        raise Failed(f"cannot read {key} {path}: {type(exc).__name__}") from None
    if not token or not all("!" <= ch <= "~" for ch in token):  # would break the header
        raise Failed(f"{key} {path} holds no usable token")
    register_secret(token)  # blanked in every log line, not only in the document
    return token


def delivered(kind: str, token_key: str, where: dict[str, Any],
              send: Callable[[], dict[str, Any] | None]) -> Delivered:
    """Run one delivery and log what it came to as `<kind>.sent|rejected|failed`; a bug in
    `send` keeps the document spooled rather than losing it."""
    try:
        extra = send() or {}
    except Rejected as exc:
        _log.error(f"{kind}.rejected", **where, error=str(exc), status=exc.status)
        return "rejected"
    except Failed as exc:
        hint = f"check {token_key}" if exc.status in (401, 403) else None
        _log.error(f"{kind}.failed", **where, error=str(exc), status=exc.status, hint=hint)
        return "failed"
    except Exception as exc:
        _log.error(f"{kind}.internal_error", **where, error=type(exc).__name__)
        return "failed"
    _log.info(f"{kind}.sent", **where, **extra)
    return "sent"
