"""Rolling reload of a Gunicorn program for a code-only deploy: add new workers first
(TTIN), retire the old ones (TTOU) only once the new ones have loaded the app.

Why it serves the new code: Supervisord starts Gunicorn with `--chdir <root>/current`, and
Gunicorn puts that path, the symlink, on sys.path; the master never imports the app (no
preload). A worker forked after the switch imports the app through the symlink, so it runs
the new release, while the old workers keep serving until they are retired; Gunicorn
retires its oldest workers first on TTOU. A HUP instead stops the old workers at once,
and requests wait in the backlog while the new ones import Django: p99 jumps (BENCHMARKS.md).

Why TTOUs go one at a time, yet the old workers exit together: signals coalesce. Two TTOUs
that reach the master before its handler ran are handled once, and the old worker that the
lost one should have retired would serve old code until the next HUP. So TTOU k+1 is sent
only once the master acted on TTOU k: the k-th oldest old worker has closed its heartbeat
(`gunicorn.retiring`). The master SIGTERMs the workers beyond its count, oldest first, and
never holds more than 2n, so that worker is first told to stop by TTOU k, and only after
the master's handler ran for it. An idle worker leaves its request loop and closes the
heartbeat within milliseconds of the SIGTERM, long before its exit ends, and the exits
overlap. An old worker busy with a slow request shows nothing until the request ends
(graceful_timeout): after RETIRE_WAIT_S the next TTOU goes anyway, as it does when /proc
cannot list the old workers, each TTOU then waiting for the count to drop (a worker reaped),
one exit after the other. The last TTOU waits the same way: once every old worker has left
its request loop none serves the old code, and the reload ends without waiting for their
interpreters to finish exiting (about 0.1 s; the master reaps them meanwhile).

What it does not do: re-read gunicorn.conf.py or move the master's cwd. So the plan HUPs
when a Gunicorn config file changed, and a HUP is used whenever /proc cannot tell the
workers' state (the app runs as another user than watcher) or the program is not RUNNING
with all its workers up. The master's cwd stays the release it was started in, and once
that release is pruned a HUP would kill the master (`gunicorn.dir_gone`): every HUP here is
then a stop and start instead.

Crash point: a kill -9 of watcher between the first TTIN and the last TTOU leaves the master
with up to twice its workers, old and new code side by side, and `current` on a release
state.json may not know: the next run's recovery switches back and HUPs, which also resets
the worker count to the configured one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import structlog

from watcher.errors import StepFailed
from watcher.kinds import ReloadMode
from watcher.parts import gunicorn
from watcher.parts.supervisor_rpc import RUNNING, Supervisor

log = structlog.get_logger()
RESEND_S = 2.0  # a TTIN whose worker is not counted by then is sent again (signals coalesce)
RETIRE_WAIT_S = 2.0  # per TTOU: wait this long for the oldest worker to retire, then move on
# /proc is read this often while waiting (about 20 readlinks: cheap); every wait ends within
# this of what it waits for, and a rolling reload waits four times or more.
POLL_S = 0.01


class _Master:
    def __init__(self, pid: int, clock: Callable[[], float],
                 sleep: Callable[[float], None]) -> None:
        self.pid, self.clock, self.sleep = pid, clock, sleep

    def count(self) -> gunicorn.Workers:
        return gunicorn.workers(self.pid) or gunicorn.Workers(0, 0)

    def wait(self, cond: Callable[[gunicorn.Workers], bool], until: float) -> bool:
        return self.poll(lambda: cond(self.count()), until)

    def poll(self, cond: Callable[[], bool], until: float) -> bool:
        while not cond():
            if self.clock() >= until:
                return False
            self.sleep(POLL_S)
        return True


def rolling_reload(sup: Supervisor, program: str, timeout: float,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> bool:
    """True when done; False when it cannot be done here (the caller HUPs instead)."""
    info = sup.info(program)
    before = gunicorn.workers(info.pid) if info.statename == RUNNING and info.pid else None
    if before is None or before.ready != before.total:
        log.info("reload.rolling_unavailable", program=program,
                 reason="workers unreadable" if before is None else "workers still booting")
        return False
    master, n = _Master(info.pid, clock, sleep), before.total
    old = gunicorn.children(info.pid)  # oldest first, before any TTIN: all of them old
    started = clock()
    deadline = started + timeout
    for target in range(n + 1, 2 * n + 1):
        sup.signal(program, "TTIN")
        while not master.wait(_at_least(target), min(deadline, clock() + RESEND_S)):
            if clock() >= deadline:
                raise StepFailed("reload", f"{program}: Gunicorn added no worker on TTIN")
            sup.signal(program, "TTIN")
    if not master.wait(lambda w: w.ready >= 2 * n, deadline):
        raise StepFailed("reload", f"{program}: the new workers did not load the app within "
                         f"{timeout:g}s (the old ones kept serving)")
    booted = clock() - started
    _retire(sup, program, master, n, old if old and len(old) == n else [], deadline)
    if sup.info(program).pid != info.pid:
        raise StepFailed("reload", f"{program}: the Gunicorn master restarted during the "
                         "rolling reload")
    log.info("reload.rolling", program=program, workers=n, boot_s=round(booted, 2),
             retire_s=round(clock() - started - booted, 2))
    return True


def _retire(sup: Supervisor, program: str, master: _Master, n: int,
            old: list[gunicorn.Worker], deadline: float) -> None:
    """The n TTOUs, each sent once the master acted on the one before (module docstring).
    An old worker that left its loop before the first TTOU (stopping by itself, e.g. at
    max_requests) proves nothing and is not watched. Until it is reaped the master may spend
    a TTOU on it again, and the worker watched for that TTOU then shows nothing: a wait of
    RETIRE_WAIT_S, never an early TTOU. One case the evidence cannot tell apart: a watched
    worker stopping by itself in the milliseconds before the master handles its TTOU (the
    reaped-worker count waited for before could not tell it either)."""
    live = [w for w in old if not gunicorn.retiring(w)]
    for k in range(n):
        sup.signal(program, "TTOU")
        until = min(deadline, master.clock() + RETIRE_WAIT_S)
        if k < len(live):
            master.poll(partial(gunicorn.retiring, live[k]), until)
        else:
            master.wait(_at_most(2 * n - 1 - k), until)


def _at_least(n: int) -> Callable[[gunicorn.Workers], bool]:
    return lambda w: w.total >= n


def _at_most(n: int) -> Callable[[gunicorn.Workers], bool]:
    return lambda w: w.total <= n


def reload_program(sup: Supervisor, program: str, mode: ReloadMode, timeout: float) -> None:
    """One program: rolling when asked and possible (else a HUP), HUP, or stop + start."""
    if mode == "rolling" and rolling_reload(sup, program, timeout):
        return
    rpc_mode = "hup" if mode in ("hup", "rolling") else "restart"
    if rpc_mode == "hup" and master_dir_gone(sup, program):
        log.warning("reload.master_dir_gone", program=program,
                    action="stop and start instead of HUP: the release the Gunicorn master "
                           "started in was pruned, and a HUP there makes it exit")
        rpc_mode = "restart"
    info = sup.reload(program, rpc_mode, timeout)
    log.info("reload.done", program=program, mode=rpc_mode, pid=info.pid)


def master_dir_gone(sup: Supervisor, program: str) -> bool:
    """The running master's directory was pruned: a HUP would make it exit (see
    `gunicorn.dir_gone`). A plain program is then stopped and started; a blue/green colour
    is swapped instead (`BlueGreen.reload`)."""
    info = sup.info(program)
    return info.statename == RUNNING and bool(info.pid) and gunicorn.dir_gone(info.pid)
