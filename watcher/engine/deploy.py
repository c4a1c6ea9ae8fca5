"""One check, and the deploy it may lead to: the executor of DESIGN §2.

`Deployer.check_once` resolves the remote head, and when it moved builds the release
(`build.py`), goes live (`switching.py`), rolls back by itself on any failure after the
switch, records the outcome in state.json and reports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from watcher.config import Config
from watcher.engine.build import Builder, BuildResult
from watcher.engine.golive import Switcher, connect
from watcher.engine.journal import Recorder, Run
from watcher.engine.plan import PlanInput, make_plan
from watcher.engine.recovery import recover
from watcher.engine.steps import StepLog
from watcher.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ROLLBACK_FAILED,
    GitError,
    Interrupted,
    StepFailed,
    TransientError,
    WatcherError,
)
from watcher.parts import lock, releases, runner, venvs
from watcher.parts.django_steps import Django
from watcher.parts.gitsource import GitSource
from watcher.parts.releases import Layout
from watcher.parts.state import ReleaseRecord, State, StateFile, iso_utc
from watcher.parts.supervisor_rpc import Supervisor

log = structlog.get_logger()


@dataclass(frozen=True)
class Outcome:
    outcome: str  # succeeded | failed | rolled_back | rollback_failed | unchanged | known_bad
    exit_code: int
    sha: str | None
    release: str | None
    message: str = ""
    duration_s: float = 0.0


class Deployer:
    def __init__(self, cfg: Config, *,
                 supervisor_factory: Callable[[Config], Supervisor] = connect,
                 recorder: Recorder | None = None) -> None:
        self.cfg = cfg
        self.layout = Layout(cfg.app.root)
        self.git = GitSource(cfg.git, self.layout.repo)
        self.state_file = StateFile(self.layout.state_dir / "state.json")
        self.switcher = Switcher(cfg, self.layout, supervisor_factory)
        self.recorder = recorder or Recorder(cfg, self.layout)

    @property
    def lock_path(self) -> Path:
        return self.layout.state_dir / "lock"

    @contextlib.contextmanager
    def locked(self, lock_wait: float = 0.0) -> Iterator[State]:
        """The lock held, children recorded, the state loaded and any crash cleaned up."""
        self.layout.prepare()
        with lock.acquire(self.lock_path, wait=lock_wait), \
                runner.tracking_children(self.layout.state_dir / "children"):
            state = self.state_file.load()
            self.recover(state)
            yield state

    # -- entry points ------------------------------------------------------------------
    def check_once(self, lock_wait: float = 0.0) -> Outcome:
        """Step 1: resolve the remote head; deploy when it moved and is not known bad."""
        with self.locked(lock_wait) as state:
            try:
                head = self.git.remote_head()
            except TransientError as exc:
                self._last_check(state, "transient", error=str(exc))
                raise
            live = state.live_record()
            if live is not None and live.sha == head:
                self._last_check(state, "unchanged", head)
                log.info("check.unchanged", sha=head[:12], release=live.name)
                return Outcome("unchanged", EXIT_OK, head, live.name, "already up to date")
            if state.is_bad(head):
                self._last_check(state, "known_bad", head)
                bad = state.bad[head]
                msg = (f"commit {head[:12]} failed before at step {bad.get('step')}; not "
                       f"retried until the branch moves (`watcher deploy {head[:12]}` forces it)")
                log.warning("check.known_bad", sha=head[:12], step=bad.get("step"))
                return Outcome("known_bad", EXIT_FAILED, head, state.live, msg)
            return self.deploy(state, head)

    def deploy_rev(self, rev: str, lock_wait: float = 0.0) -> Outcome:
        """`watcher deploy REV`: a branch, tag or sha, also a known-bad one."""
        with self.locked(lock_wait) as state:
            sha = self.git.resolve(rev)
            live = state.live_record()
            if live is not None and live.sha == sha:
                return Outcome("unchanged", EXIT_OK, sha, live.name, "already live")
            state.bad.pop(sha, None)
            outcome = self.deploy(state, sha)
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
    def deploy(self, state: State, sha: str) -> Outcome:
        steps = StepLog()
        run = self.recorder.start("deploy", state, sha, steps)
        live = state.live_record()
        name = releases.release_name(sha)
        release = self.layout.release(name)
        log.info("deploy.start", sha=sha[:12], release=name,
                 live=live.name if live else None)
        built = BuildResult()
        try:
            with steps.step("fetch"):
                if not self.git.has(sha):
                    self.git.fetch()
                if not self.git.has(sha):
                    raise GitError(f"commit {sha[:12]} is not on branch {self.cfg.git.branch}")
            with steps.step("export"):
                self.git.export(sha, release)
            run.commits = self.git.commits(live.sha if live else None, sha)
            changed = self.git.changed_paths(live.sha, sha) if live else None
            digest = venvs.venv_hash(release, self.cfg.build.requirements, self.cfg.build.python)
            plan = make_plan(PlanInput(
                live_sha=live.sha if live else None, live_venv=live.venv if live else None,
                target_sha=sha, target_venv=digest,
                venv_ready=venvs.is_complete(self.layout.venvs, digest), changed=changed,
            ), self.cfg)
            log.info("deploy.plan", steps=[f"{s.name}:{s.action}" for s in plan.steps])
            builder = Builder(self.cfg, self.layout, release, plan, steps, digest)
            built = builder.result
            builder.run(self.layout.release(live.name) if live else None)
        except (TransientError, Interrupted):
            # Not the commit's fault: nothing is marked bad, the next check tries again.
            releases.remove(release)
            self._last_check(state, "transient", sha)
            raise
        except StepFailed as exc:
            releases.remove(release)
            run.migrations = built.migrations_applied
            state.mark_bad(sha, exc.step, exc.message)
            return self._finish(state, run, "failed", EXIT_FAILED, name, exc)
        run.migrations = built.migrations_applied
        mode = plan.action("reload") or "hup"
        self.switcher.colour = live.colour if live else ""  # blue/green: the recorded colour
        try:  # supervisord unreachable: transient (exit 3) before anything is switched
            self.switcher.ensure_reachable()
        except TransientError:
            releases.remove(release)
            self._last_check(state, "transient", sha)
            raise
        try:
            self.switcher.go_live(name, sha, mode, steps)
        except WatcherError as exc:
            failure = exc if isinstance(exc, StepFailed) else StepFailed("reload", str(exc))
            state.mark_bad(sha, failure.step, failure.message)
            return self._roll_back(state, run, live, mode, name, failure)
        state.releases[name] = ReleaseRecord(name=name, sha=sha, venv=digest,
                                             colour=self.switcher.colour)
        state.live = name
        # The new release is live and healthy: record it, with its history entry and a report
        # in the spool, before the hooks and pruning. Crash point: a kill after this save
        # leaves the release recorded live and a report (without those last steps) that the
        # next flush delivers; _finish below replaces both with the complete ones.
        placeholder = self.recorder.finish(run, "succeeded", name, None, announce=False)
        state.add_history(self.recorder.history_entry(placeholder))
        self.state_file.save(state)
        held = self.recorder.hold(placeholder)
        self._after_switch(state, steps)
        return self._finish(state, run, "succeeded", EXIT_OK, name, None, held)

    def _roll_back(self, state: State, run: Run, live: ReleaseRecord | None, mode: str,
                   failed: str, exc: StepFailed) -> Outcome:
        """Any failure after the switch: the previous release back, reloaded the same way."""
        if live is None or not self.layout.release(live.name).is_dir():
            log.error("rollback.impossible", reason="no previous release")
            return self._finish(state, run, "rollback_failed", EXIT_ROLLBACK_FAILED, failed, exc)
        log.warning("rollback.start", to=live.name, reason=str(exc))
        try:
            self.switcher.go_live(live.name, live.sha, mode, run.steps, prefix="rollback_")
        except WatcherError as rexc:
            log.error("rollback.failed", error=str(rexc))
            return self._finish(state, run, "rollback_failed", EXIT_ROLLBACK_FAILED, failed, exc)
        live.colour = self.switcher.colour  # blue/green: the colour serving it now
        releases.remove(self.layout.release(failed))
        return self._finish(state, run, "rolled_back", EXIT_FAILED, live.name, exc)

    def _after_switch(self, state: State, steps: StepLog) -> None:
        """Step 13: post_switch hooks and pruning; failures are logged, the deploy stays."""
        live = state.live_record()
        if live is None:
            return
        release = self.layout.release(live.name)
        django = Django(self.cfg.django, release)
        for i, argv in enumerate(self.cfg.hooks.post_switch):
            try:
                with steps.step("post_switch", hook=i):
                    django.hook(argv, "post_switch", self.cfg.hooks.timeout)
            except WatcherError as exc:
                log.warning("post_switch.failed", error=str(exc))
        with steps.step("prune"):
            self.prune(state)

    def prune(self, state: State) -> None:
        existing = set(self.layout.names())
        prev = state.previous(existing)
        releases.prune(self.layout, self.cfg.app.keep_releases,
                       protect=[state.live, prev.name if prev else None])
        existing = set(self.layout.names())
        state.forget_missing(existing)
        venvs.prune(self.layout.venvs,
                    [venvs.linked_hash(self.layout.release(n)) for n in existing])

    # -- bookkeeping -------------------------------------------------------------------
    def _finish(self, state: State, run: Run, outcome: str, code: int,
                release: str | None, exc: StepFailed | None,
                held: Path | None = None) -> Outcome:
        report = self.recorder.finish(run, outcome, release, exc)
        entry = self.recorder.history_entry(report)
        if state.history and state.history[-1].get("id") == report.id:
            state.history[-1] = entry  # the placeholder written when the release went live
        else:
            state.add_history(entry)
        self._last_check(state, "deployed" if outcome == "succeeded" else "failed", run.to_sha)
        self.recorder.send(report, replace=held)
        message = str(exc) if exc else ""
        return Outcome(outcome, code, run.to_sha, release, message, report.duration_s)

    def _last_check(self, state: State, result: str, sha: str | None = None,
                    error: str = "") -> None:
        state.last_check = {"at": iso_utc(), "result": result, "remote_sha": sha,
                            "error": error}
        self.state_file.save(state)

    def recover(self, state: State) -> None:
        """Clean up after a watcher killed mid-deploy (the lock is ours now)."""
        recover(self.layout, self.state_file, self.switcher, state)

