"""The pure planner: (live release, target commit, changed paths, config) -> the deploy's steps.

No I/O here: every fact the plan needs is in `PlanInput`, so plans are tested with tables.
The plan is the executor's only script: `deploy.py` runs its steps in order, dispatching on
each step's kind (`steps.TABLE`) and reading its `action`; each step's `reason` is logged.
The source steps (fetch, export) come first and are planned from what the mirror holds
(`source_steps`), since the rest of the plan needs the exported release's requirements.
`reload_mode` is the one place that decides how the app reloads: deploys, automatic and
manual rollbacks, and recovery all ask it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import cast

from watcher.config import Config
from watcher.engine.steps import KINDS, Phase
from watcher.kinds import ReloadMode, StepName

STATIC_SUFFIXES = frozenset({
    ".css", ".js", ".mjs", ".map", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".webp",
    ".avif", ".woff", ".woff2", ".ttf", ".eot", ".otf",
})


@dataclass(frozen=True)
class PlanInput:
    live_sha: str | None  # None before the first deploy
    live_venv: str | None
    target_sha: str
    target_venv: str  # hash of the new release's requirements + interpreter
    venv_ready: bool  # venvs/<target_venv> is complete already
    changed: frozenset[str] | None  # None when unknown (first deploy, history rewritten)
    have_commit: bool = True  # the mirror held the commit before this deploy (no fetch)


@dataclass(frozen=True)
class Step:
    name: StepName
    action: str
    reason: str


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    def action(self, name: str) -> str | None:
        step = self.step(name)
        return step.action if step is not None else None

    def phase(self, phase: Phase) -> tuple[Step, ...]:
        """The steps of one phase of the table (`steps.TABLE`), in order."""
        return tuple(s for s in self.steps if KINDS[s.name].phase == phase)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    @property
    def reload_mode(self) -> ReloadMode:
        return cast(ReloadMode, self.action("reload") or "hup")


def source_steps(have_commit: bool, verify: str = "off",
                 have_live: bool = False) -> tuple[Step, ...]:
    """Fetch (when the mirror lacks the commit), verify its signature (with `git.verify`),
    export: what the rest is planned from. Verifying comes before anything is exported.
    With a live release, the export links unchanged files from it (docs/releases.md); it
    falls back to a full export by itself when the live release cannot serve as a base."""
    fetch = (Step("fetch", "skip", "commit already in the mirror") if have_commit
             else Step("fetch", "run", "commit not in the mirror yet"))
    check = (Step("verify", verify, f"git.verify = {verify}: only signed commits"),)
    export = (Step("export", "link", "unchanged files linked from the live release")
              if have_live else Step("export", "full", "first deploy: a full export"))
    return (fetch, *(check if verify != "off" else ()), export)


def make_plan(inp: PlanInput, cfg: Config) -> Plan:
    steps: list[Step] = list(source_steps(inp.have_commit, cfg.git.verify,
                                          inp.live_sha is not None))
    if cfg.build.shared:
        steps.append(Step("shared", "link", f"{len(cfg.build.shared)} shared path(s)"))
    steps.append(_venv(inp))
    steps.append(Step("check", "run", "gate: manage.py check"))
    migrate = _migrate(cfg)
    if migrate:
        steps.append(migrate)
    collect = _collectstatic(inp, cfg)
    if collect:
        steps.append(collect)
    if cfg.hooks.pre_switch:
        steps.append(Step("pre_switch", "run", f"{len(cfg.hooks.pre_switch)} hook(s)"))
    if smoke_url(cfg):
        steps.append(Step("smoke", "run", f"health path + {len(cfg.health.smoke_paths)} "
                          "smoke path(s); in the gate's boot unless a migration is pending"))
    mode, why = reload_mode(cfg, live_venv=inp.live_venv if inp.live_sha else None,
                            target_venv=inp.target_venv, changed=inp.changed)
    steps.extend(web_steps(cfg, mode, why))
    steps.extend(worker_steps(cfg))
    contract = _contract_migrate(inp, cfg)
    if contract:
        steps.append(contract)
    if cfg.hooks.post_switch:
        steps.append(Step("post_switch", "run", f"{len(cfg.hooks.post_switch)} hook(s)"))
    steps.append(Step("prune", "run", f"keep {cfg.app.keep_releases} releases"))
    return Plan(tuple(steps))


def venv_changed(inp: PlanInput) -> bool:
    return inp.live_venv != inp.target_venv


def _venv(inp: PlanInput) -> Step:
    if inp.venv_ready:
        why = "same requirements as live" if not venv_changed(inp) else "built before"
        return Step("venv", "reuse", why)
    return Step("venv", "build", "new requirements or interpreter")


def _migrate(cfg: Config) -> Step | None:
    mode = cfg.django.migrate
    if mode == "never":
        return None
    if mode == "always":
        return Step("migrate", "run", "django.migrate = always")
    return Step("migrate", "auto", "run when migrations are pending")


def _contract_migrate(inp: PlanInput, cfg: Config) -> Step | None:
    """Step 12b (DESIGN 2a): removals wait until the old code no longer serves. A first
    deploy has no old code: everything runs before the switch."""
    if cfg.django.migrate == "never" or cfg.django.migration_safety == "off":
        return None
    if inp.live_sha is None:
        return None
    return Step("contract_migrate", "auto", "run when contract migrations are pending")


def _collectstatic(inp: PlanInput, cfg: Config) -> Step | None:
    mode = cfg.django.collectstatic
    if mode == "never":
        return None
    if mode == "always":
        return Step("collectstatic", "run", "django.collectstatic = always")
    if inp.live_sha is None or inp.changed is None:
        return Step("collectstatic", "run", "first deploy or unknown changes")
    if venv_changed(inp):  # e.g. a new interpreter: unpinned packages may bring new statics
        return Step("collectstatic", "run", "new venv: installed packages may have changed")
    why = _static_reason(inp.changed, cfg)
    if why:
        return Step("collectstatic", "run", why)
    return Step("collectstatic", "carry", "no static, requirements or settings change")


def _static_reason(changed: frozenset[str], cfg: Config) -> str | None:
    requirements = set(cfg.build.requirements)
    for path in sorted(changed):
        p = PurePosixPath(path)
        if path in requirements:
            return f"requirements changed: {path}"
        if "static" in p.parts or p.suffix.lower() in STATIC_SUFFIXES:
            return f"static file changed: {path}"
        if "settings" in p.stem or "settings" in p.parts:
            return f"settings changed: {path}"
    return None


def smoke_url(cfg: Config) -> str:
    """The URL whose path and Host the smoke requests use (step 9a): health.url, else the
    first blue/green health URL; "" when there is no health check at all."""
    if cfg.health.url:
        return cfg.health.url
    return cfg.bluegreen.health_urls[0] if cfg.bluegreen is not None else ""


def go_live_steps(cfg: Config, mode: ReloadMode, why: str) -> tuple[Step, ...]:
    """Switch, reload and health, then the workers: how a deploy, a rollback (automatic or
    by hand) and the recovery of an interrupted deploy all put a release live."""
    return web_steps(cfg, mode, why) + worker_steps(cfg)


def web_steps(cfg: Config, mode: ReloadMode, why: str) -> tuple[Step, ...]:
    """Switch, reload and health of the web programs."""
    steps = [Step("switch", "run", "current -> the release"), Step("reload", mode, why)]
    if cfg.health.url or cfg.bluegreen is not None:
        steps.append(Step("health", "run", "health URL" if cfg.health.url
                          else "blue/green health URLs"))
    return tuple(steps)


def worker_steps(cfg: Config) -> tuple[Step, ...]:
    """Step 12b's end: the workers onto the live code, once the web passed health; never
    HUPed (they re-read nothing on HUP), in neither blue/green colour."""
    workers = cfg.supervisor.workers
    if not workers:
        return ()
    return (Step("workers", "restart", f"{len(workers)} worker(s): {', '.join(workers)}"),)


def reload_mode(cfg: Config, *, live_venv: str | None, target_venv: str,
                changed: frozenset[str] | None = None) -> tuple[ReloadMode, str]:
    """How to reload the app when `target_venv` replaces `live_venv` (None: nothing runs
    yet), with the reason. HUP and rolling keep the master and its interpreter, so a new
    venv needs the programs started afresh: the idle blue/green colour when there is one.
    Code only: rolling (new workers before the old ones retire, `rolling.py`) when the
    changed paths are known and no Gunicorn config file is among them (only a HUP re-reads
    it); a HUP otherwise (rollbacks by hand, recovery)."""
    mode = cfg.supervisor.reload
    if mode != "auto":
        return cast(ReloadMode, mode), f"supervisor.reload = {mode}"  # checked at load
    if live_venv is None:
        return "restart", "first deploy: start the programs"
    if live_venv != target_venv:
        if cfg.bluegreen is not None:
            return "bluegreen", "venv changed: start the idle colour"
        return "restart", "venv changed: workers need the new interpreter"
    if changed is None:
        return "hup", "code only, changes unknown: graceful worker reload"
    conf = sorted(p for p in changed if _GUNICORN_CONF.search(PurePosixPath(p).name))
    if conf:
        return "hup", f"code only, {conf[0]} changed: a HUP re-reads it"
    return "rolling", "code only: new workers first, the old ones retire once they serve"


_GUNICORN_CONF = re.compile(r"^gunicorn.*\.(py|conf)$")
