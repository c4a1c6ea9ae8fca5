"""Timing and logging of deploy steps: start, end, duration, outcome, for logs and the report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import structlog

from watcher.errors import StepFailed, TransientError, WatcherError
from watcher.report import StepResult

log = structlog.get_logger()


class StepLog:
    def __init__(self) -> None:
        self.results: list[StepResult] = []

    @contextlib.contextmanager
    def step(self, name: str, **info: object) -> Iterator[None]:
        """Time one step. A WatcherError that is not a StepFailed becomes one for this step;
        a transient error stays transient (the caller retries later, nothing is marked bad)."""
        log.info("step.start", step=name, **info)
        started = time.monotonic()
        try:
            yield
        except StepFailed as exc:
            self._end(name, "timeout" if exc.timed_out else "failed", started, error=exc.message)
            raise
        except TransientError as exc:
            self._end(name, "failed", started, error=str(exc))
            raise
        except WatcherError as exc:
            self._end(name, "failed", started, error=str(exc))
            raise StepFailed(name, str(exc)) from exc
        except BaseException:
            self._end(name, "failed", started, error="interrupted")
            raise
        self._end(name, "ok", started)

    def skipped(self, name: str, reason: str) -> None:
        log.info("step.skipped", step=name, reason=reason)
        self.results.append(StepResult(name=name, outcome="skipped", duration_s=0.0))

    def _end(self, name: str, outcome: str, started: float, error: str = "") -> None:
        duration = round(time.monotonic() - started, 3)
        self.results.append(StepResult(name=name, outcome=outcome, duration_s=duration))
        if outcome == "ok":
            log.info("step.end", step=name, outcome=outcome, duration_s=duration)
        else:
            log.error("step.end", step=name, outcome=outcome, duration_s=duration, error=error)
