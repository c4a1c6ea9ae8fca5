"""Steps 4-9 of a deploy: everything that happens in the new release before the switch.

`Builder.run` walks the plan's steps of phase "before" after the source steps (shared, venv,
check, migrate, collectstatic, pre_switch, and any step added to the table later) and calls
the method named like each step. Nothing here touches `current` or the running app, so any
failure leaves the live release serving; the caller removes the half-built release.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from watcher.config import Config
from watcher.engine.fleet_rollout import FleetRollout
from watcher.engine.migrations import MigrationPolicy, decide
from watcher.engine.plan import Plan, Step, smoke_url
from watcher.engine.steps import StepLog
from watcher.errors import StepFailed
from watcher.parts import venvs
from watcher.parts.django_findings import Inspection, SmokeSpec
from watcher.parts.django_steps import Django
from watcher.parts.releases import Layout, hardlink_tree, link_shared

log = structlog.get_logger()
SOURCE = ("fetch", "verify", "export")  # run by the executor itself: the plan is made from them


class Builder:
    def __init__(self, cfg: Config, layout: Layout, release: Path, plan: Plan,
                 steps: StepLog, venv_digest: str, live_release: Path | None,
                 allow_unsafe: bool = False, fleet: FleetRollout | None = None,
                 sha: str = "", contract_left: frozenset[str] = frozenset()) -> None:
        self.cfg = cfg
        self.layout = layout
        self.release = release
        self.plan = plan
        self.steps = steps
        self.digest = venv_digest
        self.live_release = live_release
        self.django = Django(cfg.django, release, gates=layout.state_dir)
        self.inspection: Inspection | None = None
        self.allow_unsafe = allow_unsafe  # `deploy --allow-unsafe-migrations`
        self.contract_left = contract_left  # contract migrations the live release left
        self.policy = MigrationPolicy()  # from the migration classes (DESIGN 2a)
        # Which pending migrations ran, also when migrate failed halfway (MySQL DDL is not
        # transactional, so a failed migrate can leave the schema partly changed).
        self.migrations_applied: list[str] = []
        self.smoked = False  # step 9a ran in the gate's boot
        self.fleet, self.sha = fleet, sha  # [fleet]: one server of the fleet migrates a commit
        self.migrated_here = False  # this server ran step 7 (so it runs 12b too)
        self._migrate: tuple[str, tuple[str, ...]] = ("", ())  # step 7's reason, pending

    def run(self) -> None:
        dispatch: dict[str, Callable[[Step], None]] = {
            "shared": self.shared, "venv": self.venv, "check": self.check,
            "migrate": self.migrate, "collectstatic": self.collectstatic,
            "pre_switch": self.pre_switch, "smoke": self.smoke,
        }
        for step in self.plan.phase("before"):
            if step.name not in SOURCE:
                dispatch[step.name](step)

    def shared(self, step: Step) -> None:
        with self.steps.step("shared", step.reason):
            link_shared(self.layout, self.release, self.cfg.build.shared)

    def venv(self, step: Step) -> None:
        build = self.cfg.build
        with self.steps.step("venv", step.reason, action=step.action):
            if step.action == "build":
                venvs.build(self.layout.venvs, self.digest, self.release, python=build.python,
                            requirements=build.requirements, pip_args=build.pip_args,
                            timeout=build.timeout, installer=build.installer,
                            cache=self.layout.state_dir / "cache" / "uv",
                            donor=venvs.linked_hash(self.live_release)
                            if self.live_release else None)
            venvs.link(self.release, self.digest)

    def check(self, step: Step) -> None:
        mode = self.cfg.django.migration_safety
        spec = self._smoke_spec()
        with self.steps.step("check", step.reason):
            self.inspection = self.django.inspect(gate=True, classify=mode != "off", smoke=spec)
            self.policy = decide(self.inspection, mode, first_deploy=self.live_release is None,
                                 allow_unsafe=self.allow_unsafe, left=self.contract_left)
            for warning in self.policy.warnings:
                log.warning("migrate.warning", warning=warning)
            if self.policy.refusal:  # before any migration ran: the schema is untouched
                raise StepFailed("check", self.policy.refusal)
        found = self.inspection.smoke
        if found is not None and not found.deferred:  # judged now: a failure stops here
            with self.steps.step("smoke", "no migration pending: in the gate's Django boot"):
                found.verdict()
            self.smoked = True

    def migrate(self, step: Step) -> None:
        """Every pending migration but the contract ones, which wait for step 12b."""
        held = set(self.policy.contract)
        pending = tuple(m for m in (self.inspection.pending if self.inspection else ())
                        if m not in held)
        if step.action == "auto" and not pending:
            self.steps.skipped("migrate", "only contract migrations pending: after the switch"
                               if held else "no pending migrations")
            return
        self._migrate = (step.reason, pending)
        if self.fleet is None:
            self.migrate_now()
        elif not self.fleet.migrate(self.sha, self.migrate_now):
            self.steps.skipped("migrate", "another server of the fleet migrates this commit")

    def migrate_now(self) -> None:
        """Step 7 itself; with [fleet] also run by a server taking over from a dead holder,
        under `setpriv --pdeathsig` so it dies with this watcher (see Django.migrate)."""
        reason, pending = self._migrate
        targets = self.policy.before_switch
        fleet = self.fleet is not None
        self.migrated_here = True
        try:
            with self.steps.step("migrate", reason, pending=list(pending)):
                if targets is None:
                    self.django.migrate(die_with_watcher=fleet)
                for app, name in targets or ():
                    self.django.migrate(app, name, die_with_watcher=fleet)
        except StepFailed:
            self.migrations_applied = self._applied_after_failure(pending)
            raise
        self.migrations_applied = list(pending)

    def _applied_after_failure(self, pending: tuple[str, ...]) -> list[str]:
        try:
            still = set(self.django.inspect(step="migrate").pending)
        except StepFailed:
            log.warning("migrate.applied_unknown")
            return []
        return [m for m in pending if m not in still]

    def collectstatic(self, step: Step) -> None:
        if step.action == "carry" and self.inspection is not None:
            target = self.inspection.static_dir_in(self.release)
            if target is None:
                self.steps.skipped("collectstatic", "no change, and nothing local to carry: "
                                   "remote static storage or STATIC_ROOT outside the release")
                return
            live = self.live_release
            source = live / target.relative_to(self.release) if live else None
            if source is not None and source.is_dir():
                with self.steps.step("collectstatic", step.reason, action="carry"):
                    files = hardlink_tree(source, target)
                    log.info("collectstatic.carried", files=files)
                return
        with self.steps.step("collectstatic", step.reason, action="run"):
            self.django.collectstatic()

    def smoke(self, step: Step) -> None:
        """Step 9a, when the gate's boot could not run it: one more Django boot, after
        migrate and collectstatic."""
        spec = self._smoke_spec()
        if self.smoked or spec is None:
            return
        found = self.inspection.smoke if self.inspection else None
        with self.steps.step("smoke", found.deferred if found else step.reason):
            self.django.smoke(spec).verdict()

    def _smoke_spec(self) -> SmokeSpec | None:
        if self.plan.step("smoke") is None:
            return None
        health = self.cfg.health
        collect = self.plan.action("collectstatic")
        return SmokeSpec(smoke_url(self.cfg), health.smoke_paths,
                         self.sha if health.expect_revision else "",
                         static_pending=collect in ("run", "carry"))

    def pre_switch(self, step: Step) -> None:
        for i, argv in enumerate(self.cfg.hooks.pre_switch):
            with self.steps.step("pre_switch", step.reason if i == 0 else "", hook=i):
                self.django.hook(argv, "pre_switch", self.cfg.hooks.timeout)
