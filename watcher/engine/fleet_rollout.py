"""A deploy's part in a fleet rollout (DESIGN §8), for the steps that touch other servers.

The deploy asks this module, at four points:

1. before building (`refused`): is the commit marked bad by another server? Redis not
   answering here is transient (exit 3): nothing is built, migrated or switched.
2. at step 7 (`migrate`): the server that takes the commit's lock runs `migrate` under a
   renewed lease and records the result; the others skip the step and go on building.
3. before the switch (`await_migration`, `slot`): waiters wait for the result (or take the
   lock over from a holder that died and run `migrate` themselves); then each server takes
   one of `max_parallel` rollout slots, held until health passed or the rollback ended,
   and checks once more that nobody marked the commit bad meanwhile.
4. after (`rolled_back`, `beat`): a rollback marks the commit bad for the fleet; every
   check ends with the heartbeat, its only Redis round trip when nothing changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog

from watcher.config import Config
from watcher.errors import StepFailed, WatcherError
from watcher.parts.state import State

if TYPE_CHECKING:  # redis-py costs 0.15 s to import: only a deploy with [fleet] pays it
    from watcher.parts.fleet import Fleet, Lease

log = structlog.get_logger()


class FleetRollout:
    def __init__(self, cfg: Config, fleet: Fleet | None = None) -> None:
        assert cfg.fleet is not None  # noqa: S101 - only built with [fleet]
        self.cfg = cfg
        if fleet is None:
            from watcher.parts.fleet import Fleet

            fleet = Fleet(cfg.fleet, cfg.app.name)
        self.fleet = fleet
        self.wait = cfg.fleet.wait
        self.waiting_for: str | None = None  # a sha whose migration another server holds

    @property
    def host(self) -> str:
        return self.fleet.host

    # 1. ------------------------------------------------------------------------------
    def refused(self, sha: str) -> dict[str, Any] | None:
        """The fleet-wide bad mark of `sha`, if any (raises FleetUnreachable)."""
        return self.fleet.bad(sha)

    # 2. ------------------------------------------------------------------------------
    def migrate(self, sha: str, run: Callable[[], None]) -> bool:
        """Step 7 for the fleet: run `run` when this server gets the commit's lock, record
        the result and return True; return False when another server holds it (this one
        waits before its switch). A result already recorded is used: "ok" skips the step,
        "failed" fails it."""
        self.waiting_for = None
        result = self.fleet.migration_result(sha)
        if result is None:
            lease = self.fleet.claim_migration(sha)
            if lease is None:
                result = self.fleet.migration_result(sha)
                if result is None:
                    log.info("fleet.migration_elsewhere", sha=sha[:12])
                    self.waiting_for = sha
                    return False
            else:
                self._run_holding(sha, lease, run)
                return True
        self._use(sha, result)
        return False

    def _run_holding(self, sha: str, lease: Lease, run: Callable[[], None]) -> None:
        # Crash point: a kill here stops the renewal; the lease runs out and a waiting
        # server takes over. Django's migration table makes what did complete a no-op.
        try:
            run()
        except StepFailed as exc:
            self.fleet.finish_migration(sha, lease, False, exc.step, exc.message)
            raise
        except BaseException:
            lease.release()  # not the commit's fault (interrupted, Redis gone): no result
            raise
        self.fleet.finish_migration(sha, lease, True)

    def _use(self, sha: str, result: str) -> None:
        if result == "failed":
            mark = self.fleet.bad(sha) or {}
            where = mark.get("host", "another server")
            raise StepFailed("migrate", f"the migration failed on {where}: "
                             f"{mark.get('message', '')}")
        log.info("fleet.migrated_elsewhere", sha=sha[:12])

    # 3. ------------------------------------------------------------------------------
    def await_migration(self, sha: str, run: Callable[[], None]) -> None:
        """Before the switch: wait for the holder's result, bounded by fleet.wait; take over
        (run `run` under the lock) when the holder died without one."""
        if self.waiting_for != sha:
            return
        result, lease = self.fleet.wait_migration(sha, self.wait)
        self.waiting_for = None
        if lease is not None:
            self._run_holding(sha, lease, run)
        elif result is not None:
            self._use(sha, result)

    @contextlib.contextmanager
    def slot(self, sha: str) -> Iterator[dict[str, Any] | None]:
        """A rollout slot for the switch, reload, health check and any rollback; yields the
        commit's bad mark when another server marked it meanwhile (then do not switch)."""
        with self.fleet.switch_slot(self.wait):
            yield self.fleet.bad(sha)

    # 4. ------------------------------------------------------------------------------
    def rolled_back(self, sha: str, step: str, message: str) -> None:
        """Mark the commit bad for the fleet; the rollback itself never waits on Redis."""
        try:
            self.fleet.mark_bad(sha, step, message)
        except WatcherError as exc:
            log.error("fleet.mark_bad_failed", sha=sha[:12], error=str(exc))

    def forced(self, sha: str) -> None:
        """`watcher deploy SHA`: the operator vouches for the commit, fleet-wide too; a
        failure of this deploy marks it again."""
        self.fleet.clear_bad(sha)

    def beat(self, state: State, check: str) -> None:
        """The heartbeat: live release and sha, the last deploy's outcome, what this check
        found. A failure is logged, never fails a check (status --fleet shows it stale)."""
        live = state.live_record()
        last = state.history[-1].get("outcome") if state.history else None
        try:
            self.fleet.heartbeat(release=live.name if live else None,
                                 sha=live.sha if live else None, outcome=str(last or "-"),
                                 check=check, interval=self.cfg.git.interval)
        except WatcherError as exc:
            log.warning("fleet.heartbeat_failed", error=str(exc))
