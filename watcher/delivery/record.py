"""The deploy report (DESIGN §7): the document, field for field, and its id.

Delivery lives apart: `delivery.http` sends it to the logging API, `delivery.mail` mails it.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from watcher.delivery.spool import increasing_time_ns
from watcher.kinds import DEPLOY_OUTCOMES, EVENTS, Commit, DeployOutcome, Event, StepResult

__all__ = ["EVENTS", "OUTCOMES", "Commit", "ErrorInfo", "Report", "StepResult", "new_report_id",
           "redact_url"]

OUTCOMES = DEPLOY_OUTCOMES


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
    event: Event
    outcome: DeployOutcome
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
    # Who or what started it (issue 14): "poll", "webhook:<forge>", "trigger" or "cli";
    # `actor` is the user for "cli".
    trigger: str = "poll"
    actor: str | None = None
    warnings: tuple[str, ...] = ()  # e.g. migrations run that the old code may not survive
    migrations_reversed: tuple[str, ...] = ()  # by `watcher rollback --migrate`
    tag: str | None = None  # the git.tag_pattern tag deployed, if any

    def to_dict(self) -> dict[str, Any]:
        """The document of DESIGN §7, field for field and in order; `error` None when absent."""
        doc = asdict(self)
        for key in ("steps", "commits", "migrations_applied", "warnings",
                    "migrations_reversed"):
            doc[key] = list(doc[key])
        return doc


def in_design_order(doc: dict[str, Any]) -> dict[str, Any]:
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
