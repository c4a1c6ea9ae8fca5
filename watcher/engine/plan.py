"""The pure planner: (live release, target commit, changed paths, config) -> the deploy's steps.

No I/O here: every fact the plan needs is in `PlanInput`, so plans are tested with tables.
The executor (`deploy.py`) runs the steps in order and reads each step's `action`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from watcher.config import Config

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


@dataclass(frozen=True)
class Step:
    name: str
    action: str
    reason: str


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]

    def action(self, name: str) -> str | None:
        for step in self.steps:
            if step.name == name:
                return step.action
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)


def make_plan(inp: PlanInput, cfg: Config) -> Plan:
    steps: list[Step] = []
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
    steps.append(Step("switch", "run", "current -> new release"))
    steps.append(_reload(inp, cfg))
    if cfg.health.url or cfg.bluegreen is not None:
        steps.append(Step("health", "run", cfg.health.url or "blue/green health URL"))
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


def _reload(inp: PlanInput, cfg: Config) -> Step:
    mode = cfg.supervisor.reload
    if mode != "auto":
        return Step("reload", mode, f"supervisor.reload = {mode}")
    if inp.live_sha is None:
        return Step("reload", "restart", "first deploy: start the programs")
    if venv_changed(inp):
        if cfg.bluegreen is not None:
            return Step("reload", "bluegreen", "venv changed: start the idle colour")
        return Step("reload", "restart", "venv changed: workers need the new interpreter")
    return Step("reload", "hup", "code only: graceful worker reload")
