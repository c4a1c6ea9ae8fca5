"""The one owner of outcomes: every deploy, automatic rollback, manual rollback and
recovery records what happened here, in the same order of writes.

A run is `open`ed, may go `went_live` (the release recorded live in state.json, with its
history entry and a placeholder report in the spool), and is `close`d exactly once (the final
report replaces the placeholder in history and spool, and is delivered). Checks that deploy
nothing only write `last_check`.

Crash points: a kill before `went_live` leaves state.json as it was (recovery then cleans the
release up, or switches `current` back); a kill between `went_live` and `close` leaves the
release recorded live with its history entry and a report in the spool (without the steps
after it) that the next flush delivers; `close` replaces both with the complete ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from watcher import __version__
from watcher.config import Config, server_name
from watcher.delivery.http import Reporter, ReportTarget
from watcher.delivery.record import Commit, ErrorInfo, Report, new_report_id
from watcher.engine.steps import StepLog
from watcher.errors import StepFailed
from watcher.kinds import CheckOutcome, DeployOutcome, Event
from watcher.log import scrub
from watcher.parts.releases import Layout
from watcher.parts.state import ReleaseRecord, State, StateFile, iso_utc

if TYPE_CHECKING:
    from watcher.delivery.forge import ForgeNotifier
    from watcher.delivery.mail import EmailNotifier

log = structlog.get_logger()


@dataclass(frozen=True)
class Outcome:
    """What one check, deploy or rollback came to, for the CLI's exit code and the daemon."""

    outcome: CheckOutcome
    exit_code: int
    sha: str | None
    release: str | None
    message: str = ""
    duration_s: float = 0.0


@dataclass
class Run:
    event: Event
    from_sha: str | None
    to_sha: str
    steps: StepLog
    started: float = field(default_factory=time.time)
    id: str = field(default_factory=new_report_id)
    commits: list[Commit] = field(default_factory=list)
    migrations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    migrations_reversed: list[str] = field(default_factory=list)
    held: Path | None = None  # the placeholder report spooled by went_live
    trigger: str = "poll"  # poll | webhook:<forge> | trigger | cli
    actor: str | None = None  # the user, for cli
    tag: str | None = None  # the git.tag_pattern tag deployed


class Journal:
    def __init__(self, cfg: Config, layout: Layout, state_file: StateFile) -> None:
        self.cfg = cfg
        self.state_file = state_file
        self.reporter: Reporter | None = None
        if cfg.report.url:
            target = ReportTarget(url=cfg.report.url, token_file=cfg.report.token_file,
                                  format=cfg.report.format, timeout_s=cfg.report.timeout,
                                  budget_s=cfg.report.budget)
            self.reporter = Reporter(target, layout.state_dir / "spool")
        # Mail and forge code (smtplib, ssl) is imported only by configs that use them.
        self.emailer: EmailNotifier | None = None
        if cfg.email is not None:
            from watcher.delivery.mail import EmailNotifier, enabled

            if enabled(cfg.email):
                self.emailer = EmailNotifier(cfg.email, layout.state_dir / "spool-email",
                                             str(cfg.path))
        self.forge: ForgeNotifier | None = None  # [forge]: statuses on the commit
        if cfg.forge is not None:
            from watcher.delivery.forge import ForgeNotifier

            self.forge = ForgeNotifier(cfg.forge, layout.state_dir / "spool-forge",
                                       timeout_s=cfg.forge.timeout, budget_s=cfg.forge.budget)

    def open(self, event: Event, state: State, to_sha: str, *, trigger: str = "poll",
             actor: str | None = None, tag: str | None = None) -> Run:
        live = state.live_record()
        run = Run(event=event, from_sha=live.sha if live else None, to_sha=to_sha,
                  steps=StepLog(), trigger=trigger, actor=actor, tag=tag)
        if self.forge is not None:  # pending on the commit: spooled, at most forge.budget
            self.forge.started(run.id, event, to_sha, run.from_sha)
        return run

    def interrupted(self, run: Run, reason: str) -> None:
        """`run` stopped short through no fault of its commit (a transient error, a signal):
        nothing is recorded against it, but the forge's pending status is ended."""
        if self.forge is not None:
            self.forge.interrupted(run.id, run.to_sha, run.from_sha, scrub(reason))

    def went_live(self, state: State, run: Run, record: ReleaseRecord) -> None:
        """`record` is live and healthy: record it, with its history entry and a report in
        the spool, before anything else runs (hooks, pruning). See the crash points above."""
        state.releases[record.name] = record
        state.live = record.name
        placeholder = self._report(run, "succeeded", record.name, None)
        state.add_history(_history_entry(placeholder))
        self.state_file.save(state)
        if self.reporter is not None:
            run.held = self.reporter.hold(placeholder)

    def close(self, state: State, run: Run, outcome: DeployOutcome, code: int,
              release: str | None, exc: StepFailed | None) -> Outcome:
        """The final record of `run`: history, last_check, the report delivered (or spooled)
        and mailed when `notify.email.on` wants it. Never raises for delivery."""
        report = self._report(run, outcome, release, exc)
        level = log.info if outcome == "succeeded" else log.error
        level("deploy.finished", run=run.event, outcome=outcome, sha=run.to_sha[:12],
              release=release, duration_s=report.duration_s,
              error=report.error.message if report.error else None)
        entry = _history_entry(report)
        if state.history and state.history[-1].get("id") == report.id:
            state.history[-1] = entry  # the placeholder written by went_live
        else:
            state.add_history(entry)
        self.last_check(state, "deployed" if outcome == "succeeded" else "failed", run.to_sha)
        if self.reporter is not None:
            self.reporter.send(report, run.held)
        if self.emailer is not None:
            self.emailer.send(report)
        if self.forge is not None:
            self.forge.finished(report)
        return Outcome(outcome, code, run.to_sha, release, str(exc) if exc else "",
                       report.duration_s)

    def last_check(self, state: State, result: str, sha: str | None = None,
                   error: str = "", **extra: object) -> None:
        """`extra`: what a skipped or waiting head needs said (reason, hold, until, tag)."""
        state.last_check = {"at": iso_utc(), "result": result, "remote_sha": sha,
                            "error": error, **extra}
        self.state_file.save(state)

    def flush(self) -> int:
        """Re-send spooled reports, mails and forge statuses; how many went out."""
        sent = self.reporter.flush() if self.reporter is not None else 0
        sent += self.forge.flush() if self.forge is not None else 0
        return sent + (self.emailer.flush() if self.emailer is not None else 0)

    def _report(self, run: Run, outcome: DeployOutcome, release: str | None,
                exc: StepFailed | None) -> Report:
        finished = time.time()
        error = None
        if exc is not None:
            message = scrub(exc.message)
            if exc.step == "migrate" and run.migrations:
                message += (f"; migrations applied before the failure: "
                            f"{', '.join(run.migrations)} (the schema may be partly changed)")
            error = ErrorInfo(step=exc.step, message=message, output_tail=scrub(exc.output_tail))
        return Report(
            id=run.id, app=self.cfg.app.name, host=server_name(self.cfg), event=run.event,
            outcome=outcome, from_sha=run.from_sha, to_sha=run.to_sha, release=release,
            started_at=_iso(run.started), finished_at=_iso(finished),
            duration_s=round(finished - run.started, 3), steps=tuple(run.steps.results),
            error=error, commits=tuple(run.commits), migrations_applied=tuple(run.migrations),
            watcher_version=__version__, warnings=tuple(scrub(w) for w in run.warnings),
            migrations_reversed=tuple(run.migrations_reversed),
            trigger=run.trigger, actor=run.actor, tag=run.tag,
        )


def _history_entry(report: Report) -> dict[str, object]:
    doc = report.to_dict()
    doc.pop("commits", None)
    return doc


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
