"""Steps 4-9 of a deploy: everything that happens in the new release before the switch.

Nothing here touches `current` or the running app, so any failure leaves the live release
serving; the caller removes the half-built release.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import structlog

from watcher.config import Config
from watcher.engine.plan import Plan
from watcher.engine.steps import StepLog
from watcher.errors import StepFailed
from watcher.parts import venvs
from watcher.parts.django_steps import Django, Inspection
from watcher.parts.releases import Layout, hardlink_tree, link_shared

log = structlog.get_logger()


@dataclass
class BuildResult:
    migrations_applied: list[str] = field(default_factory=list)
    venv_built: bool = False


class Builder:
    def __init__(self, cfg: Config, layout: Layout, release: Path, plan: Plan,
                 steps: StepLog, venv_digest: str) -> None:
        self.cfg = cfg
        self.layout = layout
        self.release = release
        self.plan = plan
        self.steps = steps
        self.digest = venv_digest
        self.django = Django(cfg.django, release)
        self.result = BuildResult()

    def run(self, live_release: Path | None) -> BuildResult:
        cfg = self.cfg
        if self.plan.action("shared"):
            with self.steps.step("shared"):
                link_shared(self.layout, self.release, cfg.build.shared)
        with self.steps.step("venv", action=self.plan.action("venv")):
            self.result.venv_built = venvs.ensure(
                self.layout.venvs, self.digest, self.release, python=cfg.build.python,
                requirements=cfg.build.requirements, pip_args=cfg.build.pip_args,
                timeout=cfg.build.timeout,
            )
            venvs.link(self.release, self.digest)
        with self.steps.step("check"):
            inspection = self.django.inspect(gate=True)
        self._migrate(inspection)
        self._collectstatic(inspection, live_release)
        for i, argv in enumerate(cfg.hooks.pre_switch):
            with self.steps.step("pre_switch", hook=i):
                self.django.hook(argv, "pre_switch", cfg.hooks.timeout)
        return self.result

    def _migrate(self, inspection: Inspection) -> None:
        action = self.plan.action("migrate")
        if action is None:
            return
        if action == "auto" and not inspection.pending:
            self.steps.skipped("migrate", "no pending migrations")
            return
        try:
            with self.steps.step("migrate", pending=list(inspection.pending)):
                self.django.migrate()
        except StepFailed:
            self.result.migrations_applied = self._applied_after_failure(inspection.pending)
            raise
        self.result.migrations_applied = list(inspection.pending)

    def _applied_after_failure(self, pending: tuple[str, ...]) -> list[str]:
        """Which of the pending migrations did run before the failure (MySQL DDL is not
        transactional, so a failed migrate can leave the schema partly changed)."""
        try:
            still = set(self.django.inspect(step="migrate").pending)
        except StepFailed:
            log.warning("migrate.applied_unknown")
            return []
        return [m for m in pending if m not in still]

    def _collectstatic(self, inspection: Inspection, live_release: Path | None) -> None:
        action = self.plan.action("collectstatic")
        if action is None:
            return
        if action == "carry":
            target = inspection.static_dir_in(self.release)
            if target is None:
                self.steps.skipped("collectstatic", "no change, and nothing local to carry: "
                                   "remote static storage or STATIC_ROOT outside the release")
                return
            source = live_release / target.relative_to(self.release) if live_release else None
            if source is not None and source.is_dir():
                with self.steps.step("collectstatic", action="carry"):
                    files = hardlink_tree(source, target)
                    log.info("collectstatic.carried", files=files)
                return
        with self.steps.step("collectstatic", action="run"):
            self.django.collectstatic()
