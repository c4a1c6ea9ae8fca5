"""`watcher rollback [RELEASE]`: back to the previous (or a named) release, by hand."""

from __future__ import annotations

import structlog

from watcher.engine.deploy import Deployer, Outcome
from watcher.engine.steps import StepLog
from watcher.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ROLLBACK_FAILED,
    StepFailed,
    UsageError,
    WatcherError,
)
from watcher.parts import venvs
from watcher.parts.state import ReleaseRecord, State

log = structlog.get_logger()


def rollback(deployer: Deployer, target: str | None = None, lock_wait: float = 0.0) -> Outcome:
    """Switch, reload and health-check an older release; mark the commit left as bad, so the
    daemon does not redeploy it at its next check (until the branch moves)."""
    layout = deployer.layout
    with deployer.locked(lock_wait) as state:
        live = state.live_record()
        if live is None:
            raise UsageError("nothing to roll back: no release is live yet")
        record = _target(state, set(layout.names()), live, target)
        steps = StepLog()
        run = deployer.recorder.start("rollback", state, record.sha, steps)
        same_venv = record.venv == live.venv and venvs.is_complete(layout.venvs, record.venv)
        mode = "hup" if same_venv else "restart"  # with [bluegreen], restart swaps colours
        deployer.switcher.colour = live.colour  # blue/green: the colour serving `live`
        deployer.switcher.ensure_reachable()  # unreachable: exit 3, nothing switched
        try:
            deployer.switcher.go_live(record.name, record.sha, mode, steps)
        except WatcherError as exc:
            failure = exc if isinstance(exc, StepFailed) else StepFailed("reload", str(exc))
            log.error("rollback.failed", error=str(exc))
            # Try to put the release that was live back, so the operator is not left worse off.
            try:
                deployer.switcher.go_live(live.name, live.sha, mode, steps, prefix="undo_")
                state.live = live.name
                live.colour = deployer.switcher.colour  # blue/green: whichever serves it
                code, outcome = EXIT_FAILED, "failed"
            except WatcherError:
                code, outcome = EXIT_ROLLBACK_FAILED, "rollback_failed"
            report = deployer.recorder.finish(run, outcome, live.name, failure)
            state.add_history(deployer.recorder.history_entry(report))
            deployer.state_file.save(state)
            deployer.recorder.send(report)
            return Outcome(outcome, code, record.sha, live.name, str(failure))
        state.mark_bad(live.sha, "rollback", f"rolled back by hand to {record.name}")
        # Named by hand, the target is trusted again even if it was rolled away from before.
        state.bad.pop(record.sha, None)
        record.ok = True
        state.live = record.name
        record.colour = deployer.switcher.colour  # blue/green: the swap reversed
        state.releases[live.name].ok = False
        deployer.state_file.save(state)
        report = deployer.recorder.finish(run, "succeeded", record.name, None)
        state.add_history(deployer.recorder.history_entry(report))
        deployer.state_file.save(state)
        deployer.recorder.send(report)
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
