"""Processes as Linux's /proc shows them: what one process's stat line says (`proc_stat`,
for the runner, the warm gate and the Gunicorn master's workers), the workers of a Gunicorn
master taken before a reload, and when they are all gone, so step 12b can wait until the
old code no longer serves (DESIGN 2a).

After a HUP, Gunicorn's master forks new workers and lets the old ones finish the requests
they hold (up to its graceful_timeout). The children a master had before the reload are the
old code; once none of them runs, nothing serves the old code any more. A child is known by
its pid and start time, so a reused pid is not mistaken for an old worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
Snapshot = frozenset[tuple[int, str]]  # (pid, start time in clock ticks since boot)


@dataclass(frozen=True)
class ProcStat:
    """What /proc/<pid>/stat tells of a process: its state letter (Z: a zombie), its parent,
    and its start time in clock ticks since boot (field 22), which tells it from a later
    process that reused its pid."""

    state: str
    ppid: int
    start: str


def proc_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    """None once the process is gone (or /proc does not show it)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return ProcStat(fields[0], int(fields[1]), fields[19])


def start_time(pid: int, *, running: bool = False) -> str | None:
    """The start time that tells `pid` from a later process with its number; None once it
    is gone (and, with `running`, while it is a zombie)."""
    found = proc_stat(pid)
    if found is None or (running and found.state == "Z"):
        return None
    return found.start


def _stat(pid: str) -> tuple[int, str] | None:
    """(parent pid, start time), or None when the process is gone."""
    found = proc_stat(int(pid), PROC)
    return (found.ppid, found.start) if found else None


def children(parents: set[int]) -> Snapshot:
    """The children of `parents` running now."""
    found = set()
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            info = _stat(entry.name)
            if info is not None and info[0] in parents:
                found.add((int(entry.name), info[1]))
    return frozenset(found)


def running(snapshot: Snapshot) -> list[int]:
    """The processes of `snapshot` still running (same pid, same start time)."""
    return sorted(pid for pid, started in snapshot
                  if (info := _stat(str(pid))) is not None and info[1] == started)


def wait_gone(snapshot: Snapshot, timeout: float, interval: float = 0.1) -> list[int]:
    """Wait until no process of `snapshot` runs; those still running at `timeout` (empty:
    all gone)."""
    deadline = time.monotonic() + timeout
    while True:
        left = running(snapshot)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(interval)
