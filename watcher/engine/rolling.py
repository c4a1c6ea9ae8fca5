"""Rolling reload of a Gunicorn program for a code-only deploy: add new workers first
(TTIN), retire the old ones (TTOU) only once the new ones have loaded the app and, in a
deploy whose health check can tell old answers from new (the body names the sha), once the
new code passed it: `add_workers` returns a `Rollout`, the health step retires it (golive.py).
A release broken only under Gunicorn then fails its health check while the old workers
still answer half the requests, and the rollback's HUP replaces both.

Why it serves the new code: Supervisord starts Gunicorn with `--chdir <root>/current`, and
Gunicorn puts that path, the symlink, on sys.path; the master never imports the app (no
preload). A worker forked after the switch imports the app through the symlink, so it runs
the new release, while the old workers keep serving until they are retired; Gunicorn
retires its oldest workers first on TTOU. A HUP instead stops the old workers at once,
and requests wait in the backlog while the new ones import Django: p99 jumps (BENCHMARKS.md).

What it does not do: re-read gunicorn.conf.py or move the master's cwd. So the plan HUPs
when a Gunicorn config file changed, and a HUP is used whenever /proc cannot tell the
workers' state (the app runs as another user than watcher) or the program is not RUNNING
with all its workers up.

Crash point: a kill -9 of watcher between TTIN and TTOU (the health check included) leaves the master with twice its
workers, old and new code side by side, and `current` on a release state.json may not
know: the next run's recovery switches back and HUPs, which also resets the worker count
to the configured one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from watcher.errors import StepFailed
from watcher.kinds import ReloadMode
from watcher.parts import gunicorn
from watcher.parts.supervisor_rpc import RUNNING, Supervisor

log = structlog.get_logger()
RESEND_S = 2.0  # a TTIN whose worker is not counted by then is sent again (signals coalesce)
RETIRE_WAIT_S = 2.0  # per TTOU: wait this long for the oldest worker to go, then move on


class _Master:
    def __init__(self, pid: int, clock: Callable[[], float],
                 sleep: Callable[[float], None]) -> None:
        self.pid, self.clock, self.sleep = pid, clock, sleep

    def count(self) -> gunicorn.Workers:
        return gunicorn.workers(self.pid) or gunicorn.Workers(0, 0)

    def wait(self, cond: Callable[[gunicorn.Workers], bool], until: float) -> bool:
        while not cond(self.count()):
            if self.clock() >= until:
                return False
            self.sleep(0.05)
        return True


@dataclass
class Rollout:
    """New workers added and loaded beside the old ones, which still serve until `retire`.
    Between the two the deploy health-checks the new code while the old code still answers
    (golive.py): a release broken only under Gunicorn is caught before its workers serve
    alone."""

    program: str
    master: _Master
    pid: int
    n: int
    deadline: float
    booted: float

    def retire(self, sup: Supervisor) -> None:
        """TTOU once per old worker: Gunicorn retires its oldest first."""
        clock = self.master.clock
        for target in range(2 * self.n - 1, self.n - 1, -1):
            sup.signal(self.program, "TTOU")
            self.master.wait(_at_most(target), min(self.deadline, clock() + RETIRE_WAIT_S))
        if sup.info(self.program).pid != self.pid:
            raise StepFailed("reload", f"{self.program}: the Gunicorn master restarted "
                             "during the rolling reload")
        log.info("reload.rolling", program=self.program, workers=self.n,
                 boot_s=round(self.booted, 2))


def add_workers(sup: Supervisor, program: str, timeout: float,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> Rollout | None:
    """TTIN once per worker and wait until the new ones have loaded the app; None when it
    cannot be done here (the caller HUPs instead)."""
    info = sup.info(program)
    before = gunicorn.workers(info.pid) if info.statename == RUNNING and info.pid else None
    if before is None or before.ready != before.total:
        log.info("reload.rolling_unavailable", program=program,
                 reason="workers unreadable" if before is None else "workers still booting")
        return None
    master, n = _Master(info.pid, clock, sleep), before.total
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
    return Rollout(program, master, info.pid, n, deadline, clock() - started)


def _at_least(n: int) -> Callable[[gunicorn.Workers], bool]:
    return lambda w: w.total >= n


def _at_most(n: int) -> Callable[[gunicorn.Workers], bool]:
    return lambda w: w.total <= n


def reload_program(sup: Supervisor, program: str, mode: ReloadMode, timeout: float,
                   pending: list[Rollout] | None = None) -> None:
    """One program: rolling when asked and possible (else a HUP), HUP, or stop + start.
    With `pending`, a rolling reload stops before retiring the old workers and is appended
    there: the caller retires them once the new code passed its health check."""
    if mode == "rolling":
        rollout = add_workers(sup, program, timeout)
        if rollout is not None:
            if pending is None:
                rollout.retire(sup)
            else:
                pending.append(rollout)
            return
    rpc_mode = "hup" if mode in ("hup", "rolling") else "restart"
    info = sup.reload(program, rpc_mode, timeout)
    log.info("reload.done", program=program, mode=rpc_mode, pid=info.pid)
