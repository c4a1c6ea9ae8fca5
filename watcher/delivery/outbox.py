"""Deliver documents in order through an on-disk spool: the logging API's reports and the
failure mails share this.

Each document is written to the spool first and sent from there, oldest first; one that cannot
be delivered now stays for the next flush. Nothing here ever raises: delivery must never fail
a deploy or stop the daemon's loop. Secrets are masked out of what is written to disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from watcher.delivery.formats import mask
from watcher.delivery.spool import Spool

_log = structlog.get_logger("watcher.delivery.outbox")

# deliver(doc, deadline) -> "sent" | "rejected" (this document never will be) | "failed"
Deliver = Callable[[dict[str, Any], float], str]


class Outbox:
    def __init__(self, directory: Path, max_bytes: int, kind: str, deliver: Deliver,
                 secret: Callable[[], str]) -> None:
        self.kind = kind  # "report" or "email": the prefix of every log event
        self._deliver = deliver
        self._secret = secret
        self._directory = directory
        self._max_bytes = max_bytes
        self._spool: Spool | None = None

    def hold(self, doc: dict[str, Any]) -> Path | None:
        """Spool `doc` without sending it yet: a placeholder that a later `send(replace=...)`
        swaps for the final version, and that the next flush delivers if we die first."""
        try:
            spool = self._open()
            return self._put(spool, doc) if spool is not None else None
        except Exception as exc:
            _log.error(f"{self.kind}.internal_error", id=doc.get("id"), error=type(exc).__name__)
            return None

    def send(self, doc: dict[str, Any], budget_s: float, replace: Path | None = None) -> bool:
        """Spool `doc` (in place of the `replace` placeholder), then deliver the spool in
        order. True when `doc` itself went out."""
        doc_id = str(doc.get("id"))
        deadline = time.monotonic() + budget_s
        try:
            spool = self._open()
            if spool is None:
                if self._deliver(doc, deadline) == "sent":
                    return True
                _log.critical(f"{self.kind}.lost", id=doc_id, reason="spool unavailable")
                return False
            # Spooled first, sent from the spool: a kill -9 while sending loses nothing.
            with spool.exclusive() as mine:
                if replace is not None:
                    # Crash point: a kill between this unlink and the put below loses the
                    # report; the window is one unlink and one small write.
                    replace.unlink(missing_ok=True)
                if self._put(spool, doc) is None:
                    if self._deliver(doc, deadline) == "sent":
                        return True
                    _log.critical(f"{self.kind}.lost", id=doc_id, reason="spool write failed")
                    return False
                if not mine:  # another thread or process is flushing: queue behind it
                    _log.info(f"{self.kind}.spool_busy", id=doc_id)
                    return False
                return doc_id in self._flush(spool, deadline)
        except Exception as exc:  # delivery must never fail a deploy
            _log.error(f"{self.kind}.internal_error", id=doc_id, error=type(exc).__name__)
            return False

    def flush(self, budget_s: float) -> int:
        """Deliver spooled documents oldest first, stopping at the first failure."""
        try:
            spool = self._open()
            if spool is None:
                return 0
            with spool.exclusive() as mine:
                if not mine:
                    return 0
                return len(self._flush(spool, time.monotonic() + budget_s))
        except Exception as exc:  # the daemon's loop must not die of delivery
            _log.error(f"{self.kind}.internal_error", error=type(exc).__name__)
            return 0

    def _flush(self, spool: Spool, deadline: float) -> list[str]:
        delivered: list[str] = []
        for path, payload in spool.items():
            doc = payload.get("report")
            if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
                spool.set_aside(path, "bad", error="no document")
                continue
            outcome = self._deliver(doc, deadline)
            if outcome == "rejected":  # kept on disk as *.rejected; must not block the rest
                spool.set_aside(path, "rejected")
                continue
            if outcome != "sent":
                break
            # Crash point: a kill -9 between the receiver's OK and this unlink leaves the file,
            # so the next flush sends it again; receivers de-duplicate by `id` (mails keep
            # their Message-ID, so mail clients thread the copy).
            spool.remove(path)
            delivered.append(doc["id"])
        if delivered:
            _log.info(f"{self.kind}.flushed", delivered=len(delivered))
        return delivered

    def _put(self, spool: Spool, doc: dict[str, Any]) -> Path | None:
        try:
            secret = self._secret()
        except Exception:  # an unreadable secret cannot leak; spool what we have
            secret = ""
        try:
            path = spool.put(str(doc["id"]), {"report": mask(doc, secret)})
        except Exception as exc:
            _log.error(f"{self.kind}.spool_write_failed", id=doc.get("id"),
                       error=type(exc).__name__)
            return None
        _log.info(f"{self.kind}.spooled", id=doc["id"], file=path.name)
        return path

    def _open(self) -> Spool | None:
        if self._spool is None:
            try:
                self._spool = Spool(self._directory, self._max_bytes)
            except OSError as exc:
                _log.error(f"{self.kind}.spool_unavailable", dir=str(self._directory),
                           error=type(exc).__name__)
        return self._spool
