"""`watcher rollback [RELEASE] [--migrate]`: back to the previous (or a named) release, by
hand.

Migrations (DESIGN 2a): each release records the newest migration per app it knew when it
went live. The migrations applied now that the target does not know are named; with
`--migrate` they are reversed first, with the newer (live) release's code and venv, which
has their files, in dependency order across apps. One irreversible among them refuses the
whole rollback before anything changes. Automatic rollbacks never reverse migrations.
"""

from __future__ import annotations

from dataclasses import replace

import structlog

from watcher.engine.deploy import Deployer
from watcher.engine.golive import GoLiveFailed
from watcher.engine.journal import Outcome, Run
from watcher.engine.plan import go_live_steps, reload_mode
from watcher.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ROLLBACK_FAILED,
    StepFailed,
    UsageError,
    WatcherError,
)
from watcher.kinds import DeployOutcome
from watcher.parts.django_findings import Reversal
from watcher.parts.django_steps import Django
from watcher.parts.state import ReleaseRecord, State

log = structlog.get_logger()
NAMING_TIMEOUT_S = 60.0


def rollback(deployer: Deployer, target: str | None = None, lock_wait: float = 0.0,
             migrate: bool = False, actor: str | None = None) -> Outcome:
    """Switch, reload and health-check an older release; mark the commit left as bad, so the
    daemon does not redeploy it at its next check (until the branch moves). With `migrate`,
    first reverse the migrations the older release does not know."""
    layout, journal, switcher = deployer.layout, deployer.journal, deployer.switcher
    with deployer.locked(lock_wait) as state:
        live = state.live_record()
        if live is None:
            raise UsageError("nothing to roll back: no release is live yet")
        record = _target(state, set(layout.names()), live, target)
        newer = Django(deployer.cfg.django, layout.release(live.name))
        # Only naming them must not hold up an urgent rollback when the live release hangs.
        quick = Django(replace(deployer.cfg.django, timeout=min(deployer.cfg.django.timeout,
                                                                NAMING_TIMEOUT_S)),
                       layout.release(live.name))
        reversal = _reversal(newer if migrate else quick, record)
        if migrate:
            refusal = _refusal(record, reversal)
            if refusal:
                log.error("rollback.refused", reason=refusal)
                return Outcome("failed", EXIT_FAILED, record.sha, live.name, refusal)
        run = journal.open("rollback", state, record.sha, trigger="cli", actor=actor)
        if migrate and reversal is not None and reversal.migrations:
            failure = _reverse(newer, reversal, run, record.migrations)
            if failure is not None:  # nothing switched: the newer code runs on what is left
                journal.close(state, run, "failed", EXIT_FAILED, live.name, failure)
                return Outcome("failed", EXIT_FAILED, record.sha, live.name, str(failure))
        mode, why = reload_mode(deployer.cfg, live_venv=live.venv, target_venv=record.venv)
        plan = go_live_steps(deployer.cfg, mode, why)
        switcher.ensure_reachable()  # unreachable: exit 3, nothing switched
        try:
            colour = switcher.go_live(record.name, record.sha, plan, run.steps,
                                      colour=live.colour, old=live.sha)
        except GoLiveFailed as failure:
            outcome: DeployOutcome
            log.error("rollback.failed", error=str(failure))
            # Try to put the release that was live back, so the operator is not left worse off.
            back_mode, back_why = reload_mode(deployer.cfg, live_venv=record.venv,
                                              target_venv=live.venv)
            try:
                live.colour = switcher.go_live(
                    live.name, live.sha, go_live_steps(deployer.cfg, back_mode, back_why),
                    run.steps, colour=failure.colour, keep=failure.kept, prefix="undo_")
                code, outcome = EXIT_FAILED, "failed"
            except WatcherError:
                code, outcome = EXIT_ROLLBACK_FAILED, "rollback_failed"  # the app may be down
            result = journal.close(state, run, outcome, code, live.name, failure)
            return Outcome(outcome, code, record.sha, live.name, str(failure),
                           result.duration_s)
        state.mark_bad(live.sha, "rollback", f"rolled back by hand to {record.name}")
        if deployer.rollout is not None:  # [fleet]: servers that have not switched will not
            deployer.rollout.rolled_back(live.sha, "rollback",
                                         f"rolled back by hand to {record.name}")
        # Named by hand, the target is trusted again even if it was rolled away from before.
        state.bad.pop(record.sha, None)
        record.ok = True
        record.colour = colour
        state.releases[live.name].ok = False
        journal.went_live(state, run, record)
        journal.close(state, run, "succeeded", EXIT_OK, record.name, None)
        log.info("rollback.done", release=record.name, left=live.name)
        message = f"rolled back to {record.name}; {live.sha[:12]} marked bad"
        if run.migrations_reversed:
            message += f"; reversed first: {', '.join(run.migrations_reversed)}"
        elif reversal is not None and reversal.migrations:
            message += (f"; the schema keeps {len(reversal.migrations)} migration(s) that "
                        f"{record.name} does not know: {', '.join(reversal.migrations)} "
                        "(`watcher rollback --migrate` reverses them)")
            log.warning("rollback.unknown_migrations", migrations=list(reversal.migrations))
        return Outcome("succeeded", EXIT_OK, record.sha, record.name, message)


def _reversal(newer: Django, record: ReleaseRecord) -> Reversal | None:
    """What the live (newer) release's Django says `record` does not know; None when
    `record` went live before watcher kept migrations, or Django could not tell."""
    if not record.migrations:
        return None
    try:
        return newer.reversal(record.migrations)
    except WatcherError as exc:
        log.warning("rollback.migrations_unknown", error=str(exc))
        return None


def _refusal(record: ReleaseRecord, reversal: Reversal | None) -> str:
    """Why `--migrate` must change nothing, or ""."""
    if reversal is None:
        return (f"rollback --migrate refused, nothing changed: the migrations {record.name} "
                "knew are not recorded, or Django could not read them")
    reasons = [*reversal.problems, *reversal.irreversible]
    if reasons:
        return ("rollback --migrate refused, nothing changed: " + "; ".join(reasons)
                + " (docs/migrations.md)")
    return ""


def _reverse(newer: Django, reversal: Reversal, run: Run,
             leaves: dict[str, str]) -> StepFailed | None:
    """`migrate APP TARGET` for each app, in dependency order; the failure, if one."""
    try:
        with run.steps.step("migrate_back", pending=list(reversal.migrations)):
            for app, name in reversal.commands:
                newer.migrate(app, name, step="migrate_back")
    except StepFailed as exc:
        try:  # which ones did go back before the failure
            left = set(newer.reversal(leaves).migrations)
        except WatcherError:
            left = set(reversal.migrations)
        run.migrations_reversed = [m for m in reversal.migrations if m not in left]
        return exc
    run.migrations_reversed = list(reversal.migrations)
    log.info("rollback.migrations_reversed", migrations=run.migrations_reversed)
    return None


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
