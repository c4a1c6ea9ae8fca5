"""Single-flight deploys: an flock on .watcher/lock with the holder's pid inside.

The kernel drops an flock when its holder dies, so a lock left by a killed watcher is taken
over by the next one without any stale-lock guessing; the pid inside is only for messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from watcher.errors import LockHeld

log = structlog.get_logger()


def holder(path: Path) -> int | None:
    """The pid written by the current holder, if the lock is held."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def acquire(path: Path, wait: float = 0.0, poll: float = 0.2) -> Iterator[None]:
    """Hold the lock for the block; wait up to `wait` seconds, then raise LockHeld."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                    raise LockHeld(f"another watcher (pid {pid}) is deploying; "
                                   f"lock {path}") from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        log.debug("lock.acquired", pid=os.getpid())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
