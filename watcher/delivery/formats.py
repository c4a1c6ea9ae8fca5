"""Render a report document (DESIGN §7) into the body one logging API expects.

Pure functions: no I/O and no clock (the caller passes `now`). The shapes follow each
vendor's public docs:

- json: the document as is.
- slack: an incoming-webhook message, `text` plus Block Kit `blocks` (section text at most
  3000 chars, at most 10 fields of at most 2000 chars each).
- betterstack: one event for the Better Stack (Logtail) HTTP source: `dt` (RFC 3339),
  `message`, and the document's fields at the top level.
- datadog: Logs intake v2 (`POST /api/v2/logs`): an array of one log object with the
  reserved attributes (`ddsource`, `service`, `hostname`, `ddtags`, `message`, `status`)
  and the document under `watcher`.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

FORMATS = ("json", "slack", "betterstack", "datadog")
CONTENT_TYPE = "application/json"

# Better Stack keeps an event's own time only when it is recent (the docs name 15 minutes);
# a report delivered later from the spool gets the send time as `dt` and keeps
# `finished_at` in its fields.
_BETTERSTACK_MAX_AGE = timedelta(minutes=14)
_SLACK_TEXT_MAX = 3000
_SLACK_FIELDS_MAX = 10
_SLACK_TAIL_CHARS = 1500
_SLACK_MESSAGE_CHARS = 500


def render(
    doc: dict[str, Any], fmt: str, *, now: datetime | None = None
) -> tuple[bytes, str]:
    """Return (body, content type) for `doc` in format `fmt`; ValueError on an unknown format."""
    if fmt == "json":
        return _dumps(doc), CONTENT_TYPE
    if fmt == "slack":
        return _dumps(slack_message(doc)), CONTENT_TYPE
    if fmt == "betterstack":
        return _dumps({"dt": _betterstack_dt(doc, now), "message": summary(doc), **doc}), (
            CONTENT_TYPE
        )
    if fmt == "datadog":
        return _dumps([datadog_log(doc)]), CONTENT_TYPE
    raise ValueError(f"unknown report format {fmt!r}; expected one of {', '.join(FORMATS)}")


def auth_headers(fmt: str, token: str) -> dict[str, str]:
    """Headers carrying `token` for `fmt`; none for Slack (the webhook URL is the secret)."""
    if not token or fmt == "slack":
        return {}
    if fmt == "datadog":
        return {"DD-API-KEY": token}
    return {"Authorization": f"Bearer {token}"}


def mask(value: Any, secret: str) -> Any:
    """`value` (a document) with `secret` replaced wherever it appears, say in an output tail."""
    if len(secret) < 8:  # too short to tell from ordinary text
        return value
    if isinstance(value, str):
        return value.replace(secret, "[redacted]")
    if isinstance(value, dict):
        return {k: mask(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, secret) for v in value]
    return value


def summary(doc: dict[str, Any]) -> str:
    """One line: app, event, outcome, host, short shas, duration, and the failed step."""
    line = (
        f"{doc.get('app', '?')} {doc.get('event', 'deploy')} {doc.get('outcome', '?')}"
        f" on {doc.get('host', '?')}: {_short(doc.get('from_sha'))} -> {_short(doc.get('to_sha'))}"
        f" in {_seconds(doc.get('duration_s'))}"
    )
    error = doc.get("error")
    if isinstance(error, dict) and error.get("step"):
        line += f" (failed at {error['step']})"
    return line


def slack_message(doc: dict[str, Any]) -> dict[str, Any]:
    """Slack incoming-webhook payload: a plain `text` fallback and Block Kit `blocks`."""
    icon = ":white_check_mark:" if doc.get("outcome") == "succeeded" else ":x:"
    head = (
        f"{icon} *{_esc(doc.get('app', '?'))}* {_esc(doc.get('event', 'deploy'))}"
        f" *{_esc(doc.get('outcome', '?'))}* on `{_esc(doc.get('host', '?'))}`\n"
        f"`{_short(doc.get('from_sha'))}` → `{_short(doc.get('to_sha'))}`"
        f" in {_seconds(doc.get('duration_s'))}"
    )
    blocks: list[dict[str, Any]] = [_section(head)]
    fields = [_mrkdwn(_step_text(step)) for step in doc.get("steps") or []]
    if len(fields) > _SLACK_FIELDS_MAX:
        extra = len(fields) - _SLACK_FIELDS_MAX + 1
        fields = [*fields[: _SLACK_FIELDS_MAX - 1], _mrkdwn(f"… and {extra} more steps")]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    error = doc.get("error")
    if isinstance(error, dict):
        message = _esc(error.get("message", ""))[:_SLACK_MESSAGE_CHARS]
        text = f"*Error in {_esc(error.get('step', '?'))}:* {message}"
        tail = _esc(error.get("output_tail", "")).replace("```", "'''")
        if tail.strip():
            if len(tail) > _SLACK_TAIL_CHARS:
                tail = "…" + tail[-_SLACK_TAIL_CHARS:]
            text += f"\n```{tail}```"
        blocks.append(_section(text))
    context = (
        f"release {_esc(doc.get('release') or '-')} · id {_esc(doc.get('id', '?'))}"
        f" · watcher {_esc(doc.get('watcher_version', '?'))}"
    )
    blocks.append({"type": "context", "elements": [_mrkdwn(context)]})
    return {"text": _esc(summary(doc)), "blocks": blocks}


def datadog_log(doc: dict[str, Any]) -> dict[str, Any]:
    """One Datadog log object; no `date` attribute, so Datadog stamps it at intake."""
    tags = ",".join(
        f"{key}:{_tag(doc.get(key, ''))}" for key in ("app", "event", "outcome", "host")
    )
    return {
        "ddsource": "watcher",
        "service": str(doc.get("app", "")),
        "hostname": str(doc.get("host", "")),
        "ddtags": tags,
        "message": summary(doc),
        "status": "info" if doc.get("outcome") == "succeeded" else "error",
        "watcher": doc,
    }


def _betterstack_dt(doc: dict[str, Any], now: datetime | None) -> str:
    finished = str(doc.get("finished_at", ""))
    if now is None:
        return finished
    try:
        stamp = datetime.fromisoformat(finished.replace("Z", "+00:00"))
        if stamp.tzinfo is not None and now - stamp <= _BETTERSTACK_MAX_AGE:
            return finished
    except ValueError:
        pass
    return now.isoformat().replace("+00:00", "Z")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _short(sha: Any) -> str:
    return str(sha)[:7] if sha else "none"


def _seconds(value: Any) -> str:
    return f"{value:.1f}s" if isinstance(value, int | float) else "?s"


def _esc(value: Any) -> str:
    """Slack mrkdwn escaping: only &, < and > are control characters."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text[:2000]}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:_SLACK_TEXT_MAX]}}


def _step_text(step: Any) -> str:
    if not isinstance(step, dict):
        return _esc(step)
    duration = _seconds(step.get("duration_s"))
    return f"*{_esc(step.get('name', '?'))}*\n{_esc(step.get('outcome', '?'))}, {duration}"


def _tag(value: Any) -> str:
    """A Datadog tag value: no commas (the separator) and no spaces."""
    return str(value).replace(",", "_").replace(" ", "_")
