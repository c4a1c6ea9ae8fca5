"""The record of one deploy or rollback: the report of DESIGN §7, the history entry, delivery."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from watcher import __version__
from watcher.config import Config
from watcher.delivery.mail import EmailNotifier, enabled
from watcher.delivery.report import Commit, ErrorInfo, Report, Reporter, ReportTarget, new_report_id
from watcher.engine.steps import StepLog
from watcher.errors import StepFailed
from watcher.log import scrub
from watcher.parts.releases import Layout
from watcher.parts.state import State

log = structlog.get_logger()


@dataclass
class Run:
    event: str
    from_sha: str | None
    to_sha: str
    steps: StepLog
    started: float = field(default_factory=time.time)
    id: str = field(default_factory=new_report_id)
    commits: list[Commit] = field(default_factory=list)
    migrations: list[str] = field(default_factory=list)


class Recorder:
    def __init__(self, cfg: Config, layout: Layout) -> None:
        self.cfg = cfg
        self.layout = layout
        self.reporter: Reporter | None = None
        if cfg.report.url:
            target = ReportTarget(url=cfg.report.url, token_file=cfg.report.token_file,
                                  format=cfg.report.format, timeout_s=cfg.report.timeout,
                                  budget_s=cfg.report.budget)
            self.reporter = Reporter(target, layout.state_dir / "spool")
        self.emailer: EmailNotifier | None = None
        if cfg.email is not None and enabled(cfg.email):
            self.emailer = EmailNotifier(cfg.email, layout.state_dir / "spool-email",
                                         str(cfg.path))

    def start(self, event: str, state: State, to_sha: str, steps: StepLog) -> Run:
        live = state.live_record()
        return Run(event=event, from_sha=live.sha if live else None, to_sha=to_sha, steps=steps)

    def finish(self, run: Run, outcome: str, release: str | None,
               exc: StepFailed | None, *, announce: bool = True) -> Report:
        finished = time.time()
        error = None
        if exc is not None:
            message = scrub(exc.message)
            if exc.step == "migrate" and run.migrations:
                message += (f"; migrations applied before the failure: "
                            f"{', '.join(run.migrations)} (the schema may be partly changed)")
            error = ErrorInfo(step=exc.step, message=message, output_tail=scrub(exc.output_tail))
        report = Report(
            id=run.id, app=self.cfg.app.name, host=socket.gethostname(), event=run.event,
            outcome=outcome, from_sha=run.from_sha, to_sha=run.to_sha, release=release,
            started_at=_iso(run.started), finished_at=_iso(finished),
            duration_s=round(finished - run.started, 3), steps=tuple(run.steps.results),
            error=error, commits=tuple(run.commits), migrations_applied=tuple(run.migrations),
            watcher_version=__version__,
        )
        if not announce:  # a placeholder (Recorder.hold): the final report is still to come
            return report
        level = log.info if outcome == "succeeded" else log.error
        level("deploy.finished", outcome=outcome, sha=run.to_sha[:12], release=release,
              duration_s=report.duration_s, error=error.message if error else None)
        return report

    def history_entry(self, report: Report) -> dict[str, object]:
        doc = report.to_dict()
        doc.pop("commits", None)
        return doc

    def hold(self, report: Report) -> Path | None:
        """A placeholder of the report in the spool (see Reporter.hold)."""
        return self.reporter.hold(report) if self.reporter is not None else None

    def send(self, report: Report, replace: Path | None = None) -> None:
        """To the logging API and, for the outcomes in notify.email.on, by mail; both spool
        what they cannot deliver and never raise."""
        if self.reporter is not None:
            self.reporter.send(report, replace)
        if self.emailer is not None:
            self.emailer.send(report)

    def flush(self) -> int:
        """Re-send spooled reports and mails; how many went out."""
        sent = self.reporter.flush() if self.reporter is not None else 0
        return sent + (self.emailer.flush() if self.emailer is not None else 0)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
