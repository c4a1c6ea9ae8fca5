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

Reading another process's /proc/<pid>/fd needs the same user (or root): when the app runs
as another user than watcher, `workers` answers None and the caller falls back to a HUP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT = "wgunicorn-"


@dataclass(frozen=True)
class Workers:
    total: int  # live workers, including ones shutting down and not reaped yet
    ready: int  # of those, the ones that loaded the app and entered their request loop


def workers(master_pid: int, proc: Path = Path("/proc")) -> Workers | None:
    """The master's workers, or None when /proc cannot tell (another user's process, no
    /proc, or not a Gunicorn master)."""
    try:
        fds = list((proc / str(master_pid) / "fd").iterdir())
    except OSError:
        return None
    total = ready = 0
    for fd in fds:
        try:
            if HEARTBEAT not in os.readlink(fd):
                continue
            st = os.stat(fd)  # through the fd link: the open, unlinked heartbeat file
        except OSError:
            continue  # closed meanwhile (a worker reaped)
        total += 1
        if abs(st.st_mtime - st.st_ctime) > 1.0:
            ready += 1
    return Workers(total, ready) if total else None


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
