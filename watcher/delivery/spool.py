"""The on-disk spool of reports the logging API has not accepted yet (`.watcher/spool/`).

One JSON file per report, named `<time_ns:020d>-<id>.json` so that names sort in the order
the reports were spooled. Files are written atomically (temp file, fsync, rename) with mode
0600 in a 0700 directory. A file that cannot be read back is renamed to `*.bad` and skipped.
The spool holds documents, never rendered bodies or credentials.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

_log = structlog.get_logger("watcher.delivery.spool")

_SUFFIX = ".json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_STALE_TMP_S = 3600.0
_clock_lock = threading.Lock()
_last_ns = 0


def increasing_time_ns() -> int:
    """Wall-clock nanoseconds, strictly increasing within this process."""
    global _last_ns
    with _clock_lock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return _last_ns


def _report_id(path: Path) -> str:
    return path.name.removesuffix(_SUFFIX).partition("-")[2]


class Spool:
    """A directory of pending report documents, oldest first, capped at `max_bytes`."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)  # mkdir's mode is filtered by the umask; an old dir is tightened
        self._remove_stale_temps()

    def put(self, report_id: str, payload: dict[str, Any]) -> Path:
        """Write `payload` atomically as the newest file, then enforce the size cap."""
        safe_id = _UNSAFE.sub("_", report_id)[:64] or "report"
        final = self.directory / f"{increasing_time_ns():020d}-{safe_id}{_SUFFIX}"
        tmp = self.directory / f".{final.name}.tmp"
        data = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            # Crash point: a kill -9 before this rename leaves only a dot-named *.tmp file,
            # which items() never lists and a later Spool() removes once it is an hour old.
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._fsync_dir()
        _log.debug("spool.put", id=report_id, file=final.name, bytes=len(data))
        self._enforce_cap(keep=final)
        return final

    def items(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every readable report, oldest first; corrupt files are set aside as `*.bad`."""
        found: list[tuple[Path, dict[str, Any]]] = []
        for path in self._files():
            try:
                payload = json.loads(path.read_bytes())
            except FileNotFoundError:
                continue  # delivered and removed by another process meanwhile
            except (OSError, ValueError) as exc:
                self.set_aside(path, "bad", error=type(exc).__name__)
                continue
            if not isinstance(payload, dict):
                self.set_aside(path, "bad", error="not a JSON object")
                continue
            found.append((path, payload))
        return found

    def remove(self, path: Path) -> None:
        """Delete a delivered report's file (gone already is fine)."""
        path.unlink(missing_ok=True)

    def set_aside(self, path: Path, reason: str, **context: Any) -> Path:
        """Rename `path` to `<name>.<reason>` so it no longer blocks the spool; kept for humans."""
        target = path.with_name(f"{path.name}.{reason}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
        _log.error(f"spool.{reason}", file=path.name, id=_report_id(path), **context)
        return target

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[bool]:
        """Try to take the spool's flock without waiting; yields whether it was taken.

        Threads and processes (daemon, `watcher deploy`) both sending keeps the order only
        if one of them flushes at a time; the one that does not get the lock spools instead.
        """
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            acquired = True
        except BlockingIOError:
            acquired = False
        except BaseException:
            os.close(fd)
            raise
        try:
            yield acquired
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _files(self) -> list[Path]:
        return sorted(
            p for p in self.directory.iterdir() if p.name.endswith(_SUFFIX) and p.name[0] != "."
        )

    def _enforce_cap(self, keep: Path) -> None:
        """Drop the oldest files until the spool fits `max_bytes`; never the one just written."""
        sizes: list[tuple[Path, int]] = []
        for path in self._files():
            with contextlib.suppress(FileNotFoundError):
                sizes.append((path, path.stat().st_size))
        total = sum(size for _, size in sizes)
        for path, size in sizes:
            if total <= self.max_bytes or path == keep:
                break
            self.remove(path)
            total -= size
            _log.warning("spool.dropped", id=_report_id(path), file=path.name, bytes=size)

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - _STALE_TMP_S
        for path in self.directory.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
