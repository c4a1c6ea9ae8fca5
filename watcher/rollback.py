"""`watcher rollback [RELEASE]`: back to the previous (or a named) release, by hand."""

from __future__ import annotations

import structlog

from watcher import lock, venvs
from watcher.deploy import Deployer, Outcome
from watcher.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ROLLBACK_FAILED,
    StepFailed,
    UsageError,
    WatcherError,
)
from watcher.state import ReleaseRecord
from watcher.steplog import StepLog

log = structlog.get_logger()


def rollback(deployer: Deployer, target: str | None = None, lock_wait: float = 0.0) -> Outcome:
    """Switch, reload and health-check an older release; mark the commit left as bad, so the
    daemon does not redeploy it at its next check (until the branch moves)."""
    layout = deployer.layout
    layout.prepare()
    with lock.acquire(deployer.lock_path, wait=lock_wait):
        state = deployer.state_file.load()
        deployer.recover(state)
        live = state.live_record()
        if live is None:
            raise UsageError("nothing to roll back: no release is live yet")
        existing = set(layout.names())
        record = _target(state.releases, existing, live, target, state.previous(existing))
        steps = StepLog()
        run = deployer.recorder.start("rollback", state, record.sha, steps)
        same_venv = record.venv == live.venv and venvs.is_complete(layout.venvs, record.venv)
        mode = "hup" if same_venv else "restart"
        try:
            deployer.switcher.go_live(record.name, record.sha, mode, steps)
        except WatcherError as exc:
            failure = exc if isinstance(exc, StepFailed) else StepFailed("reload", str(exc))
            log.error("rollback.failed", error=str(exc))
            # Try to put the release that was live back, so the operator is not left worse off.
            try:
                deployer.switcher.go_live(live.name, live.sha, mode, steps, prefix="undo_")
                state.live = live.name
                code, outcome = EXIT_FAILED, "failed"
            except WatcherError:
                code, outcome = EXIT_ROLLBACK_FAILED, "rollback_failed"
            report = deployer.recorder.finish(run, outcome, live.name, failure)
            state.add_history(deployer.recorder.history_entry(report))
            deployer.state_file.save(state)
            deployer.recorder.send(report)
            return Outcome(outcome, code, record.sha, live.name, str(failure))
        state.mark_bad(live.sha, "rollback", f"rolled back by hand to {record.name}")
        state.live = record.name
        state.releases[live.name].ok = False
        deployer.state_file.save(state)
        report = deployer.recorder.finish(run, "succeeded", record.name, None)
        state.add_history(deployer.recorder.history_entry(report))
        deployer.state_file.save(state)
        deployer.recorder.send(report)
        log.info("rollback.done", release=record.name, left=live.name)
        return Outcome("succeeded", EXIT_OK, record.sha, record.name,
                       f"rolled back to {record.name}; {live.sha[:12]} marked bad")


def _target(known: dict[str, ReleaseRecord], existing: set[str], live: ReleaseRecord,
            name: str | None, previous: ReleaseRecord | None) -> ReleaseRecord:
    if name is None:
        if previous is None:
            raise UsageError("no previous release on disk to roll back to")
        return previous
    if name == live.name:
        raise UsageError(f"release {name} is already live")
    if name not in existing or name not in known:
        choices = ", ".join(sorted(n for n in existing if n in known and n != live.name))
        raise UsageError(f"release {name} is gone or unknown; on disk: {choices or 'none'}")
    return known[name]
