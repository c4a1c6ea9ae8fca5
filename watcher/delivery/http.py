"""The logging API transport: POST a report (DESIGN §7) with the shared retry policy.

`Reporter.send` never raises and takes little more than `budget_s`: what the API does not
accept goes to the spool (`watcher.delivery.spool`) and is sent again, oldest first, by the next
`send` or `flush`. Secrets: the token is read from `token_file` at each send and is never
logged, spooled or put in a body (it is even masked inside the document); URLs are logged as
scheme://host only, since a Slack webhook URL is itself a secret; exceptions from requests
are logged by class name only, since their text carries the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog

from watcher.delivery.formats import auth_headers, mask, render
from watcher.delivery.outbox import Outbox
from watcher.delivery.record import Report, in_design_order, redact_url
from watcher.delivery.retry import (
    Delivered,
    Failed,
    Retry,
    classify_status,
    delivered,
    read_token,
    with_retries,
)

_log = structlog.get_logger("watcher.delivery.http")

_MAX_ATTEMPTS = 6


@dataclass(frozen=True)
class ReportTarget:
    url: str  # "" = reporting off
    token_file: str  # "" = no auth; read at each send, stripped
    format: str  # json | slack | betterstack | datadog
    timeout_s: float = 5.0  # per HTTP attempt (connect, then read)
    budget_s: float = 15.0  # total time one send or flush may take


class Reporter:
    """Sends reports to one logging API, spooling what it cannot deliver."""

    def __init__(self, target: ReportTarget, spool_dir: Path,
                 spool_max_bytes: int = 50 * 1024 * 1024) -> None:
        self.target = target
        self._endpoint = redact_url(target.url)
        self._outbox = Outbox(spool_dir, spool_max_bytes, "report",
                              lambda doc, deadline: self._send_one(in_design_order(doc), deadline),
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
        except Failed:
            return ""

    def _send_one(self, doc: dict[str, Any], deadline: float) -> Delivered:
        """POST one document with retries."""
        where = {"id": doc.get("id"), "endpoint": self._endpoint}

        def send() -> dict[str, Any]:
            token = self._read_token()
            body, content_type = render(mask(doc, token), self.target.format,
                                        now=datetime.now(timezone.utc))
            headers = {"Content-Type": content_type, "User-Agent": "watcher",
                       **auth_headers(self.target.format, token)}

            def retrying(exc: Failed, attempt: int) -> None:
                _log.warning("report.retry", **where, error=str(exc), attempt=attempt)

            attempts = with_retries(lambda left: self._attempt(body, headers, left),
                                    deadline=deadline, max_attempts=_MAX_ATTEMPTS,
                                    floor=min(0.25, self.target.timeout_s), on_retry=retrying)
            return {"attempts": attempts}

        return delivered("report", "report.token_file", where, send)

    def _attempt(self, body: bytes, headers: dict[str, str], remaining: float) -> None:
        import requests  # here, not at the top: a no-op check never sends and saves ~60 ms

        not_transient = (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                         requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader)
        try:
            resp = requests.post(self.target.url, data=body, headers=headers,
                                 timeout=min(self.target.timeout_s, remaining),
                                 allow_redirects=False)  # a redirect could carry the token away
        except not_transient as exc:
            raise Failed(type(exc).__name__) from None  # requests' message names the URL
        except requests.RequestException as exc:
            raise Retry(type(exc).__name__) from None
        resp.close()
        classify_status(resp.status_code, resp.headers.get("Retry-After", ""))

    def _read_token(self) -> str:
        return read_token(self.target.token_file, "report.token_file")
