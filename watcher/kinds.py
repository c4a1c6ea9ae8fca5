"""The words every layer speaks: outcomes, reload modes, step names, and the two small
records (a step's result, a commit) that git, the engine and delivery all pass around.

Spelled once here, as `typing.Literal` aliases with the tuples that list them at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Event = Literal["deploy", "rollback"]
# The outcome of a deploy or rollback, as the report (DESIGN §7) and history carry it.
DeployOutcome = Literal["succeeded", "failed", "rolled_back", "rollback_failed"]
# What one check came to: a deploy outcome, or one of the answers that deploy nothing.
CheckOutcome = Literal[DeployOutcome, "unchanged", "known_bad", "skipped", "waiting"]
ReloadMode = Literal["hup", "rolling", "restart", "bluegreen"]
StepOutcome = Literal["ok", "failed", "timeout", "skipped"]
StepName = Literal[
    "fetch", "verify", "export", "shared", "venv", "check", "migrate", "collectstatic",
    "pre_switch", "smoke", "switch", "reload", "health", "workers", "contract_migrate",
    "post_switch", "prune",
]

EVENTS: tuple[Event, ...] = get_args(Event)
DEPLOY_OUTCOMES: tuple[DeployOutcome, ...] = get_args(DeployOutcome)
RELOAD_MODES: tuple[ReloadMode, ...] = get_args(ReloadMode)


@dataclass(frozen=True)
class StepResult:
    name: str  # a StepName, prefixed "rollback_", "undo_" or "recover_" on those paths
    outcome: StepOutcome
    duration_s: float


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str
    subject: str
