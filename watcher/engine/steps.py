"""Timing and logging of deploy steps: start, end, duration, outcome, for logs and the report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import structlog

from watcher.delivery.report import StepResult
from watcher.errors import Interrupted, StepFailed, TransientError, WatcherError
from watcher.parts.runner import CANCEL

log = structlog.get_logger()
# Steps that may be cut short when the daemon stops: all before the switch. After the switch
# the reload and health check always run, so `current` never points at a release that was
# not reloaded and checked.
BEFORE_SWITCH = frozenset({"fetch", "export", "shared", "venv", "check", "migrate",
                           "collectstatic", "pre_switch"})


class StepLog:
    def __init__(self) -> None:
        self.results: list[StepResult] = []

    @contextlib.contextmanager
    def step(self, name: str, **info: object) -> Iterator[None]:
        """Time one step. A WatcherError that is not a StepFailed becomes one for this step;
        a transient error stays transient (the caller retries later, nothing is marked bad)."""
        if name in BEFORE_SWITCH and CANCEL.is_set():
            raise Interrupted(f"{name}: not started, the daemon is stopping")
        log.info("step.start", step=name, **info)
        started = time.monotonic()
        try:
            yield
        except Interrupted:
            self._end(name, "failed", started, error="interrupted by shutdown")
            raise
        except StepFailed as exc:
            self._end(name, "timeout" if exc.timed_out else "failed", started, error=exc.message)
            raise
        except TransientError as exc:
            self._end(name, "failed", started, error=str(exc))
            raise
        except WatcherError as exc:
            self._end(name, "failed", started, error=str(exc))
            raise StepFailed(name, str(exc)) from exc
        except OSError as exc:  # a full disk, an immutable or missing dir: this step failed
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
