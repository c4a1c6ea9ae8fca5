"""The failure mail for one report document: pure functions, no I/O (`notify_email` sends)."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from watcher.config import EmailConfig
from watcher.delivery.formats import summary

_TAIL_LINES = 40


def render_message(doc: dict[str, Any], cfg: EmailConfig) -> EmailMessage:
    """The plain-text mail for one report document."""
    msg = EmailMessage()
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.to)
    msg["Subject"] = f"[watcher] {summary(doc)}"
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = f"<{doc.get('id', 'report')}@watcher>"
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(_text(doc))
    return msg


def _text(doc: dict[str, Any]) -> str:
    sha = {k: str(doc.get(k) or "-")[:12] for k in ("from_sha", "to_sha")}
    lines = [
        f"{doc.get('app')}: {doc.get('event')} {doc.get('outcome')} on {doc.get('host')}",
        f"from {sha['from_sha']} to {sha['to_sha']}; live release now: {doc.get('release')}",
        f"started {doc.get('started_at')}, took {doc.get('duration_s')} s", "",
    ]
    error = doc.get("error")
    if isinstance(error, dict):
        lines += [f"Failed at step {error.get('step')}:", str(error.get("message")), ""]
        tail = str(error.get("output_tail") or "").splitlines()[-_TAIL_LINES:]
        if tail:
            lines += ["Output (last lines):", *(f"  {t}" for t in tail), ""]
    applied = doc.get("migrations_applied") or []
    if applied:
        lines += ["Migrations applied (never reversed automatically):",
                  *(f"  {m}" for m in applied), ""]
    steps = doc.get("steps") or []
    if steps:
        lines.append("Steps:")
        lines += [f"  {s.get('name')}: {s.get('outcome')} ({s.get('duration_s')} s)"
                  for s in steps if isinstance(s, dict)]
        lines.append("")
    commits = doc.get("commits") or []
    if commits:
        lines.append("Commits:")
        lines += [f"  {str(c.get('sha'))[:12]} {c.get('author')}: {c.get('subject')}"
                  for c in commits if isinstance(c, dict)]
        lines.append("")
    lines.append(f"Report {doc.get('id')}, watcher {doc.get('watcher_version')}. "
                 "`watcher status` and `watcher history` on the server say more.")
    return "\n".join(lines) + "\n"
