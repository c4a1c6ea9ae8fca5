"""The table of step kinds, and the log that times each step for the logs and the report.

`TABLE` is the one list of what a deploy can do (DESIGN §2): each kind's name, whether it
runs before the switch (and so may be cut short when the daemon stops, and a failure leaves
the old release serving), goes live, or runs after, and what a failure means. The planner
(`plan.py`) emits steps of these kinds, the executor (`deploy.py`) dispatches on them, and the tests
(the fault matrix among them) read the same table.

Adding a step: one row here, a `Step` from the planner, and one small function in the
executor's dispatch (`build.py` before the switch, `golive.py` going live, `deploy.py`
after).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import structlog

from watcher.errors import Interrupted, StepFailed, TransientError, WatcherError
from watcher.kinds import StepName, StepOutcome, StepResult
from watcher.parts.runner import CANCEL

log = structlog.get_logger()

# before the switch; going live (switch, reload, health: shared with rollback and recovery);
# after the new release passed health
Phase = Literal["before", "go_live", "after"]
# What a failure of the step means for the deploy:
#   retry     - not the commit's fault when transient (exit 3, retried); else abort
#   abort     - outcome failed, nothing switched, the release removed, the commit marked bad
#   roll_back - the previous release back (outcome rolled_back or rollback_failed)
#   keep      - logged and reported; the new release stays live
OnFailure = Literal["retry", "abort", "roll_back", "keep"]


@dataclass(frozen=True)
class StepKind:
    name: StepName
    phase: Phase
    on_failure: OnFailure
    does: str


TABLE: tuple[StepKind, ...] = (
    StepKind("fetch", "before", "retry", "fetch the commit into the mirror repo/"),
    StepKind("verify", "before", "abort", "git verify-commit (and verify-tag) on the mirror"),
    StepKind("export", "before", "abort", "write the commit into releases/<id>/ with REVISION"),
    StepKind("shared", "before", "abort", "link build.shared paths from shared/"),
    StepKind("venv", "before", "abort", "reuse venvs/<hash>/ or build it"),
    StepKind("check", "before", "abort", "gate: manage.py check, WSGI import, pending plan"),
    StepKind("migrate", "before", "abort", "manage.py migrate --noinput"),
    StepKind("collectstatic", "before", "abort", "collectstatic, or carry the live files over"),
    StepKind("pre_switch", "before", "abort", "hooks.pre_switch in the new release"),
    StepKind("smoke", "before", "abort", "health path and health.smoke_paths through Django's "
             "test client in the new release (9a)"),
    StepKind("switch", "go_live", "roll_back", "current -> the new release, atomically"),
    StepKind("reload", "go_live", "roll_back", "reload the app over Supervisord's XML-RPC"),
    StepKind("health", "go_live", "roll_back", "health URL until it passes, times out, or "
             "health.failures 5xx in a row"),
    # Step 12b: after the web passed health, supervisor.workers stopped warmly and started on
    # the live code. Before the contract migrations: a worker that fails rolls back while
    # the old code can still live on the schema, and once the workers restarted no old code
    # runs anywhere when the contract migrations drop what it used.
    StepKind("workers", "go_live", "roll_back",
             "restart supervisor.workers (TERM, stopwaitsecs, start; never HUP)"),
    StepKind("contract_migrate", "after", "keep",
             "contract migrations (DESIGN 2a), once the old code no longer serves"),
    StepKind("post_switch", "after", "keep", "hooks.post_switch in the live release"),
    StepKind("prune", "after", "keep", "remove old releases and unused venvs"),
)
KINDS: dict[str, StepKind] = {kind.name: kind for kind in TABLE}
# Steps that may be cut short when the daemon stops: all before the switch. After the switch
# the reload and health check always run, so `current` never points at a release that was
# not reloaded and checked.
BEFORE_SWITCH = frozenset(kind.name for kind in TABLE if kind.phase == "before")


class StepLog:
    def __init__(self) -> None:
        self.results: list[StepResult] = []

    @contextlib.contextmanager
    def step(self, name: str, reason: str = "", **info: object) -> Iterator[None]:
        """Time one step. A WatcherError that is not a StepFailed becomes one for this step;
        a transient error stays transient (the caller retries later, nothing is marked bad)."""
        if name in BEFORE_SWITCH and CANCEL.is_set():
            raise Interrupted(f"{name}: not started, the daemon is stopping")
        if reason:
            info["reason"] = reason
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
        except Exception as exc:  # a bug, or output no one expected (a KeyError, bad JSON):
            # this step failed, like any other failure of it (report, history, bad mark)
            log.error("step.crashed", step=name, exc_info=True)
            message = internal_error(exc)
            self._end(name, "failed", started, error=message)
            raise StepFailed(name, message) from exc
        except BaseException:
            self._end(name, "failed", started, error="interrupted")
            raise
        self._end(name, "ok", started)

    @property
    def current(self) -> str:
        """The step last started (for a failure between steps), or "fetch"."""
        return self.results[-1].name if self.results else "fetch"

    def skipped(self, name: str, reason: str) -> None:
        log.info("step.skipped", step=name, reason=reason)
        self.results.append(StepResult(name=name, outcome="skipped", duration_s=0.0))

    def _end(self, name: str, outcome: StepOutcome, started: float, error: str = "") -> None:
        duration = round(time.monotonic() - started, 3)
        self.results.append(StepResult(name=name, outcome=outcome, duration_s=duration))
        if outcome == "ok":
            log.info("step.end", step=name, outcome=outcome, duration_s=duration)
        else:
            log.error("step.end", step=name, outcome=outcome, duration_s=duration, error=error)


def internal_error(exc: BaseException) -> str:
    """The message of an unexpected exception, as a step failure reports it."""
    return f"internal error: {type(exc).__name__}: {exc}"
