"""One check, and the deploy it may lead to: the executor of DESIGN §2.

`Deployer.check_once` resolves the remote head; when it moved, `deploy` runs the plan
(`plan.py`) step by step: the source steps (`source.py`), the build (`build.py`), going live
(`golive.py`), then the steps after health (`after.py`). Any failure after the switch rolls
back by itself, here. Every outcome is recorded by the journal (`journal.py`).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from pathlib import Path

import structlog

from watcher.config import Config
from watcher.engine.admission import admit
from watcher.engine.after import AfterSteps
from watcher.engine.build import Builder
from watcher.engine.fleet_rollout import FleetRollout
from watcher.engine.golive import GoLiveFailed, Switcher
from watcher.engine.journal import Journal, Outcome, Run
from watcher.engine.plan import Plan, go_live_steps
from watcher.engine.recovery import recover
from watcher.engine.source import SourceSteps
from watcher.engine.steps import internal_error
from watcher.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ROLLBACK_FAILED,
    Interrupted,
    StepFailed,
    TransientError,
    WatcherError,
)
from watcher.parts import fs, lock, orphans, releases, venvs
from watcher.parts.django_steps import Django
from watcher.parts.gitsource import GitSource
from watcher.parts.releases import Layout
from watcher.parts.signatures import Verifier
from watcher.parts.state import ReleaseRecord, State, StateFile
from watcher.schedule import Clock, utc_now

__all__ = ["Deployer", "Outcome"]

log = structlog.get_logger()


def _import_meanwhile(name: str) -> None:
    """Import `name` in a thread of its own: the build mostly waits on its children (the
    gate's Django boot, uv), so the import costs nothing there instead of about 0.1 s in the
    step that needs it. A failed import is left to that step to report."""
    def work() -> None:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)

    threading.Thread(target=work, name=f"import-{name}").start()


class Deployer:
    def __init__(self, cfg: Config, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or utc_now  # windows and pause deadlines (tests pass their own)
        self.layout = Layout(cfg.app.root)
        self.git = GitSource(cfg.git, self.layout.repo)
        self.verifier = Verifier.from_config(cfg.git, self.layout.repo, self.layout.state_dir)
        self.state_file = StateFile(self.layout.state_dir / "state.json")
        self.switcher = Switcher(cfg, self.layout)
        self.journal = Journal(cfg, self.layout, self.state_file)
        self.rollout = FleetRollout(cfg) if cfg.fleet is not None else None
        self.source = SourceSteps(cfg, self.layout, self.git, self.verifier)
        self.after = AfterSteps(cfg, self.layout, self.state_file)

    @property
    def lock_path(self) -> Path:
        return self.layout.state_dir / "lock"

    @contextlib.contextmanager
    def locked(self, lock_wait: float = 0.0) -> Iterator[State]:
        """The lock held, children recorded, the state loaded and any crash cleaned up."""
        self.layout.prepare()
        with lock.acquire(self.lock_path, wait=lock_wait), \
                orphans.tracking_children(self.layout.state_dir / "children"):
            state = self.state_file.load()
            recover(self.cfg, self.layout, self.switcher, self.journal, state)
            yield state

    # -- entry points ------------------------------------------------------------------
    def check_once(self, lock_wait: float = 0.0, *, trigger: str = "poll",
                   actor: str | None = None) -> Outcome:
        """Step 1: resolve the remote head (or the highest tag); deploy when it moved, is not
        known bad, is not skipped by the path filters, and no pause or window holds it.
        With [fleet], every check ends with this server's heartbeat."""
        with self.locked(lock_wait) as state:
            outcome: Outcome | None = None
            try:
                outcome = self._check(state, trigger, actor)
                return outcome
            finally:
                if self.rollout is not None:
                    self.rollout.beat(state, outcome.outcome if outcome else "transient")

    def _check(self, state: State, trigger: str, actor: str | None) -> Outcome:
        try:
            head, tag = self.git.remote_target()
        except TransientError as exc:
            self.journal.last_check(state, "transient", error=str(exc))
            raise
        live = state.live_record()
        if live is not None and live.sha == head:
            self.journal.last_check(state, "unchanged", head)
            log.info("check.unchanged", sha=head[:12], release=live.name)
            return Outcome("unchanged", EXIT_OK, head, live.name, "already up to date")
        if state.is_bad(head):
            self.journal.last_check(state, "known_bad", head)
            bad = state.bad[head]
            msg = (f"commit {head[:12]} failed before at step {bad.get('step')}; not "
                   f"retried until the branch moves (`watcher deploy {head[:12]}` forces it)")
            log.warning("check.known_bad", sha=head[:12], step=bad.get("step"))
            return Outcome("known_bad", EXIT_FAILED, head, state.live, msg)
        gated = admit(self.cfg, self.git, self.journal, self.clock, state, head, tag)
        if gated is not None:
            return gated
        if self.rollout is not None:
            refused = self._fleet_refused(state, head)
            if refused is not None:
                return refused
        return self.deploy(state, head, tag=tag, trigger=trigger, actor=actor)

    def _fleet_refused(self, state: State, head: str) -> Outcome | None:
        """A commit another server marked bad (its migration failed, or it rolled back
        there) is not deployed here. Redis unreachable: transient, before anything is built."""
        assert self.rollout is not None  # noqa: S101 - called with [fleet] only
        try:
            mark = self.rollout.refused(head)
        except TransientError as exc:
            self.journal.last_check(state, "transient", head, error=str(exc))
            raise
        if mark is None:
            return None
        why = f"marked bad by {mark.get('host')} at step {mark.get('step')}: {mark.get('message')}"
        state.mark_bad(head, str(mark.get("step") or "fleet"), why)
        self.journal.last_check(state, "known_bad", head)
        log.warning("check.fleet_bad", sha=head[:12], host=mark.get("host"))
        return Outcome("known_bad", EXIT_FAILED, head, state.live,
                       f"commit {head[:12]} {why}; not deployed on this server")

    def deploy_rev(self, rev: str, lock_wait: float = 0.0, allow_unsafe: bool = False,
                   actor: str | None = None) -> Outcome:
        """`watcher deploy REV`: a branch, tag or sha, also a known-bad one; with
        `allow_unsafe`, also one whose migrations the live code would not survive. Pauses,
        windows and path filters do not apply (an operator decided); signatures do."""
        with self.locked(lock_wait) as state:
            sha = self.git.resolve(rev)
            live = state.live_record()
            if live is not None and live.sha == sha:
                return Outcome("unchanged", EXIT_OK, sha, live.name, "already live")
            state.bad.pop(sha, None)
            if self.rollout is not None:  # the operator vouches for it, fleet-wide too
                self.rollout.forced(sha)
            tag = rev if self.cfg.git.tag_pattern and self.git.has_tag(rev) else None
            outcome = self.deploy(state, sha, allow_unsafe=allow_unsafe, tag=tag,
                                  trigger="cli", actor=actor)
            if outcome.outcome == "succeeded":
                self._hold(state, rev, sha)
            return outcome

    def _hold(self, state: State, rev: str, sha: str) -> None:
        """After `watcher deploy REV` of something other than the branch head, mark the head
        bad like a manual rollback does, so the daemon does not undo the operator's choice at
        its next check; a new push moves the branch and deploys as usual."""
        head = self.git.tracking_head()
        if head and head != sha and not state.is_bad(head):
            state.mark_bad(head, "deploy", f"held back: `watcher deploy {rev}` chose {sha[:12]}")
            self.state_file.save(state)
            log.info("deploy.head_held_back", head=head[:12], live=sha[:12])

    # -- the deploy --------------------------------------------------------------------
    def deploy(self, state: State, sha: str, *, allow_unsafe: bool = False,
               tag: str | None = None, trigger: str = "poll",
               actor: str | None = None) -> Outcome:
        run = self.journal.open("deploy", state, sha, trigger=trigger, actor=actor, tag=tag)
        live = state.live_record()
        name = releases.release_name(sha)
        release = self.layout.release(name)
        log.info("deploy.start", sha=sha[:12], release=name, live=live.name if live else None)
        builder: Builder | None = None
        try:
            plan, digest = self.source.plan(run, sha, live, release)
            log.info("deploy.plan", steps=[f"{s.name}:{s.action}" for s in plan.steps],
                     reasons={s.name: s.reason for s in plan.steps})
            _import_meanwhile("requests")  # for the health check and the report
            builder = Builder(self.cfg, self.layout, release, plan, run.steps, digest,
                              self.layout.release(live.name) if live else None, allow_unsafe,
                              fleet=self.rollout, sha=sha, contract_left=state.left_by_live())
            try:
                builder.run()
                if self.rollout is not None:  # another server's migration: its result first
                    self.rollout.await_migration(sha, builder.migrate_now)
            finally:
                run.warnings = list(builder.policy.warnings)
        except (TransientError, Interrupted) as exc:
            self._stopped_short(state, run, release, exc)
            raise
        except StepFailed as exc:
            return self._failed(state, run, builder, name, exc)
        except WatcherError:
            raise  # a config error (exit 2) met mid-deploy: not the commit's fault
        except Exception as exc:  # a bug between two steps: the commit's deploy failed
            return self._failed(state, run, builder, name, _between_steps(run, exc))
        run.migrations = builder.migrations_applied
        with contextlib.ExitStack() as fleet_slot:
            if self.rollout is not None:  # at most fleet.max_parallel servers from here on
                try:
                    mark = fleet_slot.enter_context(self.rollout.slot(sha))
                except TransientError as exc:
                    self._stopped_short(state, run, release, exc)
                    raise
                if mark is not None:  # rolled back elsewhere while this one was building
                    releases.remove(release)
                    refusal = StepFailed("fleet", f"marked bad by {mark.get('host')} at step "
                                         f"{mark.get('step')}: {mark.get('message')}; "
                                         "not switched")
                    state.mark_bad(sha, refusal.step, refusal.message)
                    return self.journal.close(state, run, "failed", EXIT_FAILED, name, refusal)
            return self._go_live(state, run, live, plan, name, sha, tag, release, builder,
                                 fleet_slot)

    def _go_live(self, state: State, run: Run, live: ReleaseRecord | None, plan: Plan,
                 name: str, sha: str, tag: str | None, release: Path, builder: Builder,
                 fleet_slot: contextlib.ExitStack) -> Outcome:
        """Steps 10-14: switch, reload, health (rolling back on failure), then the rest.
        A fleet's rollout slot is given back once the release is recorded live."""
        try:  # supervisord unreachable: transient (exit 3) before anything is switched
            self.switcher.ensure_reachable()
        except TransientError as exc:
            self._stopped_short(state, run, release, exc)
            raise
        except Exception as exc:  # a bug answering it: nothing switched, the deploy failed
            return self._failed(state, run, builder, name,
                                StepFailed("reload", internal_error(exc)))
        colour = live.colour if live else ""
        contract = builder.policy.contract
        if contract and self.rollout is not None and not builder.migrated_here:
            log.info("fleet.contract_elsewhere", migrations=contract)  # the holder runs 12b
            contract = []
        old = self.switcher.serving_workers() if contract else frozenset()
        try:
            colour = self.switcher.go_live(name, sha, plan.phase("go_live"), run.steps,
                                           colour=colour, old=live.sha if live else "")
        except GoLiveFailed as exc:
            state.mark_bad(sha, exc.step, exc.message)
            if self.rollout is not None:  # servers that have not switched will not
                self.rollout.rolled_back(sha, exc.step, exc.message)
            return self._roll_back(state, run, live, plan, name, exc)
        self.journal.went_live(state, run, ReleaseRecord(
            name=name, sha=sha, venv=builder.digest, colour=colour, tag=tag or "",
            migrations=dict(builder.inspection.leaves) if builder.inspection else {}))
        fleet_slot.close()  # healthy: the next server may switch while the steps after run
        self.after.run(state, plan.phase("after"), run, contract, old)
        outcome = self.journal.close(state, run, "succeeded", EXIT_OK, name, None)
        prune = plan.step("prune")
        if prune is not None:
            self.after.prune_after_report(state, prune, run)
        self.git.spare_later(self.layout.releases, name, sha)  # the next export's base
        venv = self.layout.venvs / builder.digest  # the next gate's boot, warm
        Django(self.cfg.django, self.layout.release(name), self.layout.state_dir).warm_later(
            venv, venv / venvs.COMPLETE)
        return outcome

    def _stopped_short(self, state: State, run: Run, release: Path, exc: Exception) -> None:
        """Not the commit's fault (exit 3, or a signal): nothing is marked bad, the release
        being built goes, the forge's pending status ends, the next check tries again."""
        releases.remove(release)
        self.journal.last_check(state, "transient", run.to_sha)
        self.journal.interrupted(run, str(exc) or type(exc).__name__)

    def _failed(self, state: State, run: Run, builder: Builder | None, name: str,
                exc: StepFailed) -> Outcome:
        """A failure before the switch: the release removed, the commit marked bad, the
        outcome `failed` recorded and reported; the live release keeps serving."""
        releases.remove(self.layout.release(name))
        run.migrations = builder.migrations_applied if builder else []
        state.mark_bad(run.to_sha, exc.step, exc.message)
        return self.journal.close(state, run, "failed", EXIT_FAILED, name, exc)

    def _roll_back(self, state: State, run: Run, live: ReleaseRecord | None, plan: Plan,
                   failed: str, exc: GoLiveFailed) -> Outcome:
        """Any failure after the switch: the previous release back, reloaded the same way."""
        if live is None or not self.layout.release(live.name).is_dir():
            log.error("rollback.impossible", reason="no previous release")
            return self.journal.close(state, run, "rollback_failed", EXIT_ROLLBACK_FAILED,
                                      failed, exc)
        log.warning("rollback.start", to=live.name, reason=str(exc))
        step = plan.step("reload")
        mode, why = plan.reload_mode, f"back the same way: {step.reason if step else ''}"
        if mode == "rolling":  # the broken workers go at once, not after new ones booted
            mode, why = "hup", "back by HUP: the failed release's workers must stop serving now"
        back = go_live_steps(self.cfg, mode, why)
        try:
            live.colour = self.switcher.go_live(live.name, live.sha, back, run.steps,
                                                colour=exc.colour, keep=exc.kept,
                                                prefix="rollback_")
        except WatcherError as rexc:
            log.error("rollback.failed", error=str(rexc))
            return self.journal.close(state, run, "rollback_failed", EXIT_ROLLBACK_FAILED,
                                      failed, exc)
        releases.remove(self.layout.release(failed))
        return self.journal.close(state, run, "rolled_back", EXIT_FAILED, live.name, exc)

    def stop_warm_gate(self) -> None:
        """End the warm gate the last deploy left waiting (`watcher --once` leaves it for the
        next run; a daemon that stops takes it down)."""
        Django(self.cfg.django, self.layout.current, self.layout.state_dir).stop_warm()

    def empty_trash(self) -> int:
        """Delete what pruning renamed away, in a process of its own that outlives this one:
        `watcher --once` exits and the daemon goes idle without waiting for it."""
        return fs.empty_trash([self.layout.releases, self.layout.venvs], detached=True)


def _between_steps(run: Run, exc: Exception) -> StepFailed:
    """An exception raised outside any step (making the plan, hashing requirements): the
    deploy fails at the step it was in, with a report, history and a bad mark."""
    log.error("deploy.crashed", step=run.steps.current, exc_info=True)
    failure = StepFailed(run.steps.current, internal_error(exc))
    failure.__cause__ = exc
    return failure
