"""Migration safety in a deploy (DESIGN 2a): what the gate's classes decide (pure), and the
contract migrations of step 12b.

    policy = decide(inspection, cfg.django.migration_safety, first_deploy=live is None,
                    allow_unsafe=False)
    if policy.refusal: raise StepFailed("check", policy.refusal)   # nothing has run yet
    # before the switch: `migrate` (policy.before_switch None) or `migrate APP NAME` each
    # after health, once the old code no longer serves: policy.contract, by `migrate`
"""

from __future__ import annotations

from dataclasses import dataclass, field

from watcher.parts.django_findings import Inspection, refusal

ALLOWED = "unsafe migrations deployed on purpose (--allow-unsafe-migrations)"


@dataclass(frozen=True)
class MigrationPolicy:
    refusal: str = ""  # the gate's error when the deploy must stop before any migration
    warnings: list[str] = field(default_factory=list)  # for the report's `warnings`
    # `migrate APP NAME` targets before the switch; None: one plain `migrate` runs them all
    before_switch: list[tuple[str, str]] | None = None
    contract: list[str] = field(default_factory=list)  # pending, run after the switch


def decide(inspection: Inspection, mode: str, *, first_deploy: bool,
           allow_unsafe: bool, left: frozenset[str] = frozenset()) -> MigrationPolicy:
    """What to do with the pending migrations, from their classes.

    `refuse` stops on any unsafe operation, `warn` (or `--allow-unsafe-migrations`) runs them
    and lists them; `off` classes nothing. A first deploy has no old code to protect: all
    runs before the switch and nothing is refused. Contract migrations wait for step 12b,
    but those the live release left pending (`left`: 12b failed or was postponed) are safe
    now and run before the switch.
    """
    if mode == "off" or not inspection.pending:
        return MigrationPolicy()
    inspection = inspection.with_left(left)
    unsafe = inspection.of_class("unsafe")
    warnings = [f"unknown migration operation: {v.line()}"
                for v in inspection.of_class("unknown")]
    if first_deploy:
        return MigrationPolicy(warnings=warnings)
    if unsafe and mode == "refuse" and not allow_unsafe:
        return MigrationPolicy(refusal=refusal(unsafe), warnings=warnings)
    if unsafe:
        warnings = [f"unsafe migration operation: {v.line()}" for v in unsafe] + warnings
        if allow_unsafe:
            warnings.insert(0, ALLOWED)
    return MigrationPolicy(warnings=warnings, before_switch=inspection.before_switch_targets(),
                           contract=inspection.contract())
