"""The deploy report (DESIGN §7) and its delivery to the logging API.

`Reporter.send` never raises and takes little more than `budget_s`: what the API does not
accept goes to the spool (`watcher.delivery.spool`) and is sent again, oldest first, by the next
`send` or `flush`. Secrets: the token is read from `token_file` at each send and is never
logged, spooled or put in a body (it is even masked inside the document); URLs are logged as
scheme://host only, since a Slack webhook URL is itself a secret; exceptions from requests
are logged by class name only, since their text carries the URL.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from watcher.delivery.formats import auth_headers, mask, render
from watcher.delivery.outbox import Outbox
from watcher.delivery.spool import increasing_time_ns
from watcher.log import register_secret

_log = structlog.get_logger("watcher.delivery.report")

EVENTS = ("deploy", "rollback")
OUTCOMES = ("succeeded", "failed", "rolled_back", "rollback_failed")
_MAX_ATTEMPTS = 6
_PAYLOAD_STATUSES = frozenset({400, 413, 415, 422})  # the body is refused, not the endpoint


@dataclass(frozen=True)
class StepResult:
    name: str
    outcome: str  # "ok" | "failed" | "skipped" | "timeout"
    duration_s: float


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str
    subject: str


@dataclass(frozen=True)
class ErrorInfo:
    step: str
    message: str
    output_tail: str


@dataclass(frozen=True)
class Report:
    """One deploy or rollback, as sent to the logging API."""

    id: str
    app: str
    host: str
    event: str  # one of EVENTS
    outcome: str  # one of OUTCOMES
    from_sha: str | None
    to_sha: str
    release: str | None
    started_at: str  # ISO 8601 UTC with Z
    finished_at: str
    duration_s: float
    steps: tuple[StepResult, ...]
    error: ErrorInfo | None
    commits: tuple[Commit, ...]
    migrations_applied: tuple[str, ...]
    watcher_version: str

    def to_dict(self) -> dict[str, Any]:
        """The document of DESIGN §7, field for field and in order; `error` None when absent."""
        doc = asdict(self)
        for key in ("steps", "commits", "migrations_applied"):
            doc[key] = list(doc[key])
        return doc


def _in_design_order(doc: dict[str, Any]) -> dict[str, Any]:
    """The document's keys in DESIGN §7's order (the spool stores them sorted)."""
    order = [f.name for f in fields(Report)]
    return {**{k: doc[k] for k in order if k in doc}, **doc}


def new_report_id() -> str:
    """32 hex chars: creation time in ns, then 64 random bits; ids sort by creation time."""
    return f"{increasing_time_ns():016x}{secrets.token_hex(8)}"


def redact_url(url: str) -> str:
    """scheme://host[:port] of `url`: never its userinfo, path or query (they may be secret)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


@dataclass(frozen=True)
class ReportTarget:
    url: str  # "" = reporting off
    token_file: str  # "" = no auth; read at each send, stripped
    format: str  # json | slack | betterstack | datadog
    timeout_s: float = 5.0  # per HTTP attempt (connect, then read)
    budget_s: float = 15.0  # total time one send or flush may take


class _Failed(Exception):
    """A delivery failed; the message is safe to log (no token, no URL)."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float = 0) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class _Retryable(_Failed):
    """A connection error, a timeout, a 5xx or a 429: the same request may pass later."""


class _PayloadRejected(_Failed):
    """The API refused this body (400, 413...): resending the same report cannot help."""


class Reporter:
    """Sends reports to one logging API, spooling what it cannot deliver."""

    def __init__(self, target: ReportTarget, spool_dir: Path,
                 spool_max_bytes: int = 50 * 1024 * 1024) -> None:
        self.target = target
        self._endpoint = redact_url(target.url)
        self._outbox = Outbox(spool_dir, spool_max_bytes, "report",
                              lambda doc, deadline: self._send_one(_in_design_order(doc), deadline),
                              self._token_or_nothing)

    def send(self, report: Report, replace: Path | None = None) -> bool:
        """Deliver `report` after any spooled ones. True: delivered (or reporting is off);
        False: spooled for a later flush (or, if even the spool failed, logged report.lost).
        `replace` is the placeholder `hold` spooled for the same report, swapped out."""
        if not self.target.url:
            _log.debug("report.disabled", id=report.id)
            return True
        return self._outbox.send(report.to_dict(), self.target.budget_s, replace)

    def hold(self, report: Report) -> Path | None:
        """Spool a report without sending it: what the next flush delivers if we die before
        `send` (the deploy is live; post_switch hooks and pruning are still to come)."""
        return self._outbox.hold(report.to_dict()) if self.target.url else None

    def flush(self) -> int:
        """Deliver spooled reports oldest first, stopping at the first failure; how many went."""
        if not self.target.url:
            return 0
        return self._outbox.flush(self.target.budget_s)

    def _token_or_nothing(self) -> str:
        try:
            return self._read_token()
        except _Failed:
            return ""

    def _send_one(self, doc: dict[str, Any], deadline: float) -> str:
        """POST one document with retries: "sent", "rejected" (its body) or "failed"."""
        where = {"id": doc.get("id"), "endpoint": self._endpoint}
        try:
            attempts = self._post(doc, deadline)
        except _PayloadRejected as exc:
            _log.error("report.rejected", **where, error=str(exc), status=exc.status)
            return "rejected"
        except _Failed as exc:
            hint = "check report.token_file" if exc.status in (401, 403) else None
            _log.error("report.failed", **where, error=str(exc), status=exc.status, hint=hint)
            return "failed"
        except Exception as exc:  # a bug here must not lose the report: keep it spooled
            _log.error("report.internal_error", **where, error=type(exc).__name__)
            return "failed"
        _log.info("report.sent", **where, attempts=attempts)
        return "sent"

    def _post(self, doc: dict[str, Any], deadline: float) -> int:
        """POST until a 2xx, a final failure, `_MAX_ATTEMPTS` or the deadline; attempts made."""
        token = self._read_token()
        body, content_type = render(mask(doc, token), self.target.format,
                                    now=datetime.now(timezone.utc))
        headers = {"Content-Type": content_type, "User-Agent": "watcher",
                   **auth_headers(self.target.format, token)}
        floor = min(0.25, self.target.timeout_s)  # no attempt starts with less time than this
        jitter = wait_random_exponential(multiplier=0.5, max=8)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            delay = max(jitter(state), getattr(exc, "retry_after", 0))
            return max(0.0, min(delay, deadline - time.monotonic() - floor))

        def stop(state: RetryCallState) -> bool:
            return state.attempt_number >= _MAX_ATTEMPTS or deadline - time.monotonic() < floor

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            _log.warning("report.retry", id=doc.get("id"), endpoint=self._endpoint,
                         error=str(exc), attempt=state.attempt_number)

        attempts = 0
        for attempt in Retrying(stop=stop, wait=wait, before_sleep=before_sleep, reraise=True,
                                retry=retry_if_exception_type(_Retryable)):
            with attempt:
                attempts += 1
                self._attempt(body, headers, deadline)
        return attempts

    def _attempt(self, body: bytes, headers: dict[str, str], deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Failed("time budget used up")
        import requests  # here, not at the top: a no-op check never sends and saves ~60 ms

        not_transient = (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                         requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader)
        try:
            resp = requests.post(self.target.url, data=body, headers=headers,
                                 timeout=min(self.target.timeout_s, remaining),
                                 allow_redirects=False)  # a redirect could carry the token away
        except not_transient as exc:
            raise _Failed(type(exc).__name__) from None  # requests' message names the URL
        except requests.RequestException as exc:
            raise _Retryable(type(exc).__name__) from None
        status = resp.status_code
        resp.close()
        if 200 <= status < 300:
            return
        if status == 429 or status >= 500:
            after = resp.headers.get("Retry-After", "")  # seconds; an HTTP date is ignored
            raise _Retryable(f"HTTP {status}", status, int(after) if after.isdigit() else 0)
        if status in _PAYLOAD_STATUSES:
            raise _PayloadRejected(f"HTTP {status}", status)
        raise _Failed(f"HTTP {status}", status)  # 3xx, 401, 403, 404...: the endpoint is wrong

    def _read_token(self) -> str:
        path = self.target.token_file
        if not path:
            return ""
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as exc:
            raise _Failed(f"cannot read report.token_file {path}: {type(exc).__name__}") from None
        if not token or not all("!" <= ch <= "~" for ch in token):  # would break the header
            raise _Failed(f"report.token_file {path} holds no usable token")
        register_secret(token)  # blanked in every log line, not only in the document
        return token
