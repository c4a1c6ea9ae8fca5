"""A Gunicorn master read from /proc: how many workers it has, and how many have loaded
the app, so a reload can add new workers and retire the old ones only once the new serve;
and whether its working directory still exists, so a HUP is never sent when it would kill
the master (`dir_gone`).

Gunicorn gives each worker a heartbeat file, an unlinked temp file `wgunicorn-*` that the
master keeps open until the worker is reaped. The worker first touches it (`os.utime` to
`time.monotonic()`) in its request loop, after it imported the app; until then the file's
mtime is its creation time on the wall clock, equal to its ctime. So a worker has loaded
the app once its heartbeat's mtime is more than a second away from its ctime (a monotonic
reading is decades away from the wall clock).

A worker holds its own heartbeat open too (it closed its siblings' after the fork) and
closes it in spawn_worker's `finally`, once it left its request loop: on the SIGTERM with
which the master retires it, within milliseconds when idle, only after the request when busy
with one. `retiring` reads that, for the worker `children` listed (oldest first: TTOU retires
the oldest), so a rolling reload sends the next TTOU only once the master acted on the last.

Reading another process's /proc/<pid>/fd needs the same user (or root): when the app runs
as another user than watcher, `workers` and `children` answer None and the caller falls back
(a HUP, or one reaped worker per TTOU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from watcher.parts.procs import proc_stat

HEARTBEAT = "wgunicorn-"


@dataclass(frozen=True)
class Workers:
    total: int  # live workers, including ones shutting down and not reaped yet
    ready: int  # of those, the ones that loaded the app and entered their request loop


@dataclass(frozen=True)
class Worker:
    pid: int
    heartbeat: tuple[int, int]  # its own heartbeat file: (st_dev, st_ino)


def workers(master_pid: int, proc: Path = Path("/proc")) -> Workers | None:
    """The master's workers, or None when /proc cannot tell (another user's process, no
    /proc, or not a Gunicorn master)."""
    beats = _heartbeats(proc / str(master_pid))
    if not beats:
        return None
    ready = sum(abs(st.st_mtime - st.st_ctime) > 1.0 for st in beats.values())
    return Workers(len(beats), ready)


def children(master_pid: int, proc: Path = Path("/proc")) -> list[Worker] | None:
    """The master's workers, oldest first, each with its own heartbeat; None when /proc
    cannot tell for sure: no `children` file (a kernel without CONFIG_PROC_CHILDREN, another
    user), a child holding not exactly one of the master's heartbeats (exited meanwhile, or
    a Gunicorn that leaks them), or start times out of order.

    The kernel lists a process's children in fork order, and the master forks its workers
    in the order of their age, the order TTOU retires them in."""
    task = proc / str(master_pid) / "task" / str(master_pid) / "children"
    ours = _heartbeats(proc / str(master_pid))
    try:
        pids = [int(pid) for pid in task.read_text().split()]
    except (OSError, ValueError):
        return None
    found, starts = [], []
    for pid in pids:
        own = set(_heartbeats(proc / str(pid)) or ()) & set(ours or ())
        stat = proc_stat(pid, proc)
        start = int(stat.start) if stat else None
        if len(own) != 1 or start is None:
            return None
        found.append(Worker(pid, own.pop()))
        starts.append(start)
    return found if found and starts == sorted(starts) else None


def retiring(worker: Worker, proc: Path = Path("/proc")) -> bool:
    """Whether the worker closed its heartbeat: it left its request loop (the master's
    SIGTERM, or it stopped by itself) and is exiting, a zombie, or reaped. False while it
    holds the heartbeat, and when /proc cannot tell (another user's process)."""
    pid_dir = proc / str(worker.pid)
    beats = _heartbeats(pid_dir)
    if beats is None:
        return not pid_dir.exists()  # reaped; else unreadable: no evidence
    return worker.heartbeat not in beats


def _heartbeats(pid_dir: Path) -> dict[tuple[int, int], os.stat_result] | None:
    """The heartbeat files a process holds open, by (st_dev, st_ino); None when its fds
    cannot be listed (gone, or another user's process)."""
    try:
        fds = list((pid_dir / "fd").iterdir())
    except OSError:
        return None
    beats = {}
    for fd in fds:
        try:
            if HEARTBEAT not in os.readlink(fd):
                continue
            st = os.stat(fd)  # through the fd link: the open, unlinked heartbeat file
        except OSError:
            continue  # closed meanwhile (a worker reaped)
        beats[(st.st_dev, st.st_ino)] = st
    return beats


def dir_gone(master_pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether the master's working directory was deleted: the release it was started in,
    pruned since (rolling reloads never move the master). Gunicorn's HUP then fails: it
    checks its --chdir against os.getcwd(), which raises, and the master exits without
    stopping its workers, which keep the port and serve whatever they ran. False when /proc
    cannot tell (another user's process)."""
    try:
        return os.readlink(proc / str(master_pid) / "cwd").endswith(" (deleted)")
    except OSError:
        return False
