"""`watcher rollback [RELEASE]`: back to the previous (or a named) release, by hand."""

from __future__ import annotations

import structlog

from watcher.engine.deploy import Deployer
from watcher.engine.golive import GoLiveFailed
from watcher.engine.journal import Outcome
from watcher.engine.plan import go_live_steps, reload_mode
from watcher.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ROLLBACK_FAILED,
    UsageError,
    WatcherError,
)
from watcher.kinds import DeployOutcome
from watcher.parts.state import ReleaseRecord, State

log = structlog.get_logger()


def rollback(deployer: Deployer, target: str | None = None, lock_wait: float = 0.0,
             actor: str | None = None) -> Outcome:
    """Switch, reload and health-check an older release; mark the commit left as bad, so the
    daemon does not redeploy it at its next check (until the branch moves)."""
    layout, journal, switcher = deployer.layout, deployer.journal, deployer.switcher
    with deployer.locked(lock_wait) as state:
        live = state.live_record()
        if live is None:
            raise UsageError("nothing to roll back: no release is live yet")
        record = _target(state, set(layout.names()), live, target)
        run = journal.open("rollback", state, record.sha, trigger="cli", actor=actor)
        mode, why = reload_mode(deployer.cfg, live_venv=live.venv, target_venv=record.venv)
        plan = go_live_steps(deployer.cfg, mode, why)
        switcher.ensure_reachable()  # unreachable: exit 3, nothing switched
        try:
            colour = switcher.go_live(record.name, record.sha, plan, run.steps,
                                      colour=live.colour)
        except GoLiveFailed as failure:
            outcome: DeployOutcome
            log.error("rollback.failed", error=str(failure))
            # Try to put the release that was live back, so the operator is not left worse off.
            back_mode, back_why = reload_mode(deployer.cfg, live_venv=record.venv,
                                              target_venv=live.venv)
            try:
                live.colour = switcher.go_live(
                    live.name, live.sha, go_live_steps(deployer.cfg, back_mode, back_why),
                    run.steps, colour=failure.colour, keep=failure.kept, prefix="undo_")
                code, outcome = EXIT_FAILED, "failed"
            except WatcherError:
                code, outcome = EXIT_ROLLBACK_FAILED, "rollback_failed"  # the app may be down
            result = journal.close(state, run, outcome, code, live.name, failure)
            return Outcome(outcome, code, record.sha, live.name, str(failure),
                           result.duration_s)
        state.mark_bad(live.sha, "rollback", f"rolled back by hand to {record.name}")
        # Named by hand, the target is trusted again even if it was rolled away from before.
        state.bad.pop(record.sha, None)
        record.ok = True
        record.colour = colour
        state.releases[live.name].ok = False
        journal.went_live(state, run, record)
        journal.close(state, run, "succeeded", EXIT_OK, record.name, None)
        log.info("rollback.done", release=record.name, left=live.name)
        return Outcome("succeeded", EXIT_OK, record.sha, record.name,
                       f"rolled back to {record.name}; {live.sha[:12]} marked bad")


def _target(state: State, existing: set[str], live: ReleaseRecord,
            name: str | None) -> ReleaseRecord:
    """The release to go to: the previous good one, or the one named if it is still here."""
    if name is None:
        previous = state.previous(existing)
        if previous is None:
            raise UsageError("no previous release on disk to roll back to; "
                             "`watcher deploy REV` deploys any commit")
        return previous
    if name == live.name:
        raise UsageError(f"release {name} is already live")
    if name in existing and name in state.releases:
        return state.releases[name]
    on_disk = ", ".join(sorted(n for n in existing if n in state.releases and n != live.name))
    choices = f"releases on disk: {on_disk or 'none besides the live one'}"
    deployed = {str(e.get("release")) for e in state.history} | set(state.releases)
    if name in deployed:
        raise UsageError(f"release {name} is gone (its directory was pruned or deleted); "
                         f"{choices}")
    raise UsageError(f"unknown release {name!r}; {choices}")
