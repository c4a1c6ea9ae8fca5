"""Steps 12b-14 of a deploy: what runs once the new release is live and healthy.

`AfterSteps.run` walks the plan's steps of phase "after": the contract migrations (12b, once
the old code no longer serves) and the post_switch hooks (13). A failure here is logged and
reported in the run's warnings; the deploy stays. Pruning (14) runs once the report is out
(`prune_after_report`), so it adds nothing to the deploy's duration.
"""

from __future__ import annotations

import structlog

from watcher.config import Config
from watcher.engine.journal import Run
from watcher.engine.plan import Step
from watcher.errors import WatcherError
from watcher.parts import procs, releases, venvs
from watcher.parts.django_steps import Django
from watcher.parts.releases import Layout
from watcher.parts.state import State, StateFile

log = structlog.get_logger()
# Step 12b waits this long for the old Gunicorn workers to finish their requests after a HUP
# (Gunicorn's graceful_timeout, 20 s in the shipped config, plus a margin).
OLD_WORKERS_TIMEOUT_S = 60.0


class AfterSteps:
    def __init__(self, cfg: Config, layout: Layout, state_file: StateFile) -> None:
        self.cfg = cfg
        self.layout = layout
        self.state_file = state_file

    def run(self, state: State, plan: tuple[Step, ...], run: Run,
            contract: list[str], old: procs.Snapshot) -> None:
        """Steps 12b and 13: contract migrations and post_switch hooks; failures are logged
        and reported, the deploy stays. Pruning, the other step of this phase, runs once the
        report is out (`prune_after_report`)."""
        live = state.live_record()
        if live is None:
            return
        for step in plan:
            if step.name == "contract_migrate":
                self._contract(state, run, step, contract, old)
            elif step.name == "post_switch":
                django = Django(self.cfg.django, self.layout.release(live.name))
                for i, argv in enumerate(self.cfg.hooks.post_switch):
                    try:
                        with run.steps.step("post_switch", step.reason, hook=i):
                            django.hook(argv, "post_switch", self.cfg.hooks.timeout)
                    except WatcherError as exc:
                        log.warning("post_switch.failed", error=str(exc))

    def _contract(self, state: State, run: Run, step: Step, migrations: list[str],
                  old: procs.Snapshot) -> None:
        """Step 12b (DESIGN 2a): the contract migrations, once the new release passed health
        and the old code no longer serves (after a HUP: its old workers are gone; a restart or
        a blue/green swap stopped them already). A failure keeps the new release, which does
        not use what they remove: reported in `warnings`, and the next deploy retries them,
        before its switch (`state.contract_left`: a new migration may depend on them)."""
        live = state.live_record()
        if not migrations or live is None:
            run.steps.skipped("contract_migrate", "no contract migrations pending")
            return
        left = procs.wait_gone(old, OLD_WORKERS_TIMEOUT_S)
        if left:
            why = (f"contract migrations postponed to the next deploy: old workers still "
                   f"serve the previous code (pids {', '.join(map(str, left))})")
            run.warnings.append(why)
            run.steps.skipped("contract_migrate", why)
            state.contract_left = {"release": live.name, "migrations": migrations}
            self.state_file.save(state)
            return
        # Crash point: a kill from here until the save in `finally` leaves `contract` in
        # state.json; the next start runs `migrate` in the live release (recovery.py). Django
        # skips what did apply, so each migration runs to its end exactly once.
        state.contract = {"release": live.name, "migrations": migrations}
        self.state_file.save(state)
        try:
            with run.steps.step("contract_migrate", step.reason, pending=migrations):
                Django(self.cfg.django, self.layout.release(live.name)).migrate(
                    step="contract_migrate")
            run.migrations = [*run.migrations, *migrations]
            state.contract_left = {}
        except WatcherError as exc:
            state.contract_left = {"release": live.name, "migrations": migrations}
            run.warnings.append(f"contract migrations failed; the new release stays and the "
                                f"next deploy retries them: {exc}")
            log.warning("contract_migrate.failed", error=str(exc))
        finally:
            state.contract = {}
            self.state_file.save(state)

    def prune_after_report(self, state: State, step: Step, run: Run) -> None:
        """Prune once the report is sent, still under the lock, so it adds nothing to the
        deploy's duration (the step is logged, not reported): old releases and unused venvs
        are only renamed to trash here (instant), and `empty_trash` deletes them in the
        background. Failures are logged. Crash point: a kill here leaves the deploy
        recorded and reported; a release renamed to trash is gone from state at the next
        prune (`forget_missing`), its trash deleted by the next `empty_trash`."""
        try:
            with run.steps.step("prune", step.reason):
                self.prune(state, delete=False)
                self.state_file.save(state)
        except (WatcherError, OSError) as exc:
            log.warning("prune.failed", error=str(exc))

    def prune(self, state: State, *, delete: bool = True) -> None:
        existing = set(self.layout.names())
        prev = state.previous(existing)
        releases.prune(self.layout, self.cfg.app.keep_releases,
                       protect=[state.live, prev.name if prev else None], delete=delete)
        existing = set(self.layout.names())
        state.forget_missing(existing)
        venvs.prune(self.layout.venvs,
                    [venvs.linked_hash(self.layout.release(n)) for n in existing],
                    delete=delete)
