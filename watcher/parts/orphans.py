"""Children a killed watcher leaves behind: each child `runner.run` starts inside
`tracking_children` is recorded as a file `<directory>/<pid>` holding its start time, removed
when it ends. What a SIGKILL of watcher left recorded is killed by the next run's recovery
(`reap_orphans`): a migration or a hook never runs on beside the deploy that follows."""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from watcher.parts.procs import start_time

_CHILDREN: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "watcher_children", default=None)


@contextlib.contextmanager
def tracking_children(directory: Path) -> Iterator[None]:
    """Record each child started in this block as a file `<directory>/<pid>` holding its
    start time, removed when it ends; what a SIGKILL leaves is found by `reap_orphans`."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = _CHILDREN.set(directory)
    try:
        yield
    finally:
        _CHILDREN.reset(token)


def reap_orphans(directory: Path) -> list[int]:
    """Kill the process groups of children recorded by a process that is gone."""
    killed: list[int] = []
    if not directory.is_dir():
        return killed
    for marker in directory.iterdir():
        if marker.name.isdigit() and start_time(int(marker.name)) == marker.read_text():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(marker.name), signal.SIGKILL)  # the child leads its own group
                killed.append(int(marker.name))
        marker.unlink(missing_ok=True)
    return killed


def record_child(pid: int) -> Path | None:
    """The marker of a child just started inside `tracking_children` (None outside it); the
    caller unlinks it once the child ended."""
    directory = _CHILDREN.get()
    if directory is None:
        return None
    marker = directory / str(pid)
    with contextlib.suppress(OSError):
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (start_time(pid) or "").encode())
        finally:
            os.close(fd)
        return marker
    return None
