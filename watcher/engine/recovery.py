"""Recovery after a watcher was killed mid-deploy: run by the next one, under the lock.

Crash points: a kill during export/build leaves a release dir state.json does not know:
removed here. A kill between the switch and the state record leaves `current` on an
unrecorded release whose reload or health check may not have happened: switch back to the
recorded live release and reload it; the caller then deploys normally. A kill during the
contract migrations of step 12b leaves `state.contract` set: run `migrate` in the live
release again (Django skips what did apply), once, whatever its result.
"""

from __future__ import annotations

import structlog

from watcher.config import Config
from watcher.engine.golive import GoLiveFailed, Switcher
from watcher.engine.journal import Journal
from watcher.engine.plan import go_live_steps, reload_mode
from watcher.engine.steps import StepLog
from watcher.errors import WatcherError
from watcher.parts import fs, orphans, releases, venvs
from watcher.parts.django_steps import Django
from watcher.parts.release_spare import PREFIX as SPARE
from watcher.parts.releases import Layout
from watcher.parts.state import State

log = structlog.get_logger()


def recover(cfg: Config, layout: Layout, switcher: Switcher, journal: Journal,
            state: State) -> None:
    # A watcher killed with SIGKILL leaves its children (pip, migrate, a hook) running in
    # their own sessions, still writing into a release or venv: end them first.
    for pid in orphans.reap_orphans(layout.state_dir / "children"):
        log.warning("recover.killed_orphan", pid=pid)
    for stray in layout.root.glob(".current-*"):
        stray.unlink(missing_ok=True)
    # A kill inside StateFile.save leaves its temp file, named by the dead pid: never reused.
    state_file = journal.state_file
    for stray in state_file.path.parent.glob(f"{state_file.path.name}.tmp-*"):
        stray.unlink(missing_ok=True)
    linked = layout.live()
    live = state.live_record()
    if live is not None and linked != live.name and layout.release(live.name).is_dir():
        log.warning("recover.switch_back", found=linked, live=live.name)
        other = layout.release(linked) if linked else None
        mode, why = reload_mode(cfg, live_venv=venvs.linked_hash(other) if other else "",
                                target_venv=live.venv)
        try:
            live.colour = switcher.go_live(live.name, live.sha, go_live_steps(cfg, mode, why),
                                           StepLog(), colour=live.colour, prefix="recover_")
            state_file.save(state)
        except GoLiveFailed as exc:
            log.error("recover.failed", error=str(exc))
        linked = live.name
    if state.contract:
        _contract(cfg, layout, journal, state)
    try:
        record = state.live_record()
        switcher.reconcile(record.colour if record else "")
    except WatcherError as exc:
        log.warning("recover.republish_failed", error=str(exc))
    known = set(state.releases) | ({linked} if linked else set())
    for name in layout.names():
        if name not in known:
            log.warning("recover.remove_release", release=name)
            releases.remove(layout.release(name))
    # `.trash-*` (pruned, maybe half-deleted by a killed deleter) is left to empty_trash,
    # off the deploy path, and `.spare*` to its builder (under its own lock); other
    # dot-names are a killed export's temp files.
    for tmp in layout.releases.glob(".*"):
        if not tmp.name.startswith((fs.TRASH, SPARE)):
            releases.remove(tmp)
    if layout.venvs.is_dir():
        for venv in layout.venvs.iterdir():
            if venv.name.startswith(fs.TRASH):
                continue
            if venv.name.startswith(".") or not (venv / venvs.COMPLETE).exists():
                log.warning("recover.remove_venv", venv=venv.name)
                releases.remove(venv)


def _contract(cfg: Config, layout: Layout, journal: Journal, state: State) -> None:
    """Contract migrations a killed watcher left under way: run them again in the live
    release (its old workers are long gone), then forget them; a failure is logged and the
    next deploy retries them."""
    pending, release = state.contract.get("migrations", []), state.contract.get("release")
    if release == state.live and release and layout.release(release).is_dir():
        try:
            with StepLog().step("recover_contract_migrate", pending=pending):
                Django(cfg.django, layout.release(release)).migrate(step="contract_migrate")
            log.warning("contract.recovered", release=release, migrations=pending)
        except WatcherError as exc:
            log.error("contract.recover_failed", release=release, error=str(exc))
            state.contract_left = dict(state.contract)  # the next deploy runs them first
    state.contract = {}
    journal.state_file.save(state)
