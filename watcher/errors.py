"""One exception tree. Each error knows its exit code and whether it is transient.

Exit codes (DESIGN §5): 0 deployed or up to date; 1 deploy failed, previous release live;
2 usage or config error; 3 transient failure; 4 rollback failed, the app may be down.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TRANSIENT = 3
EXIT_ROLLBACK_FAILED = 4


class WatcherError(Exception):
    """Root of every error watcher raises on purpose."""

    exit_code = EXIT_FAILED
    transient = False


class ConfigError(WatcherError):
    """The config file or an override is wrong; the message names the key and the file."""

    exit_code = EXIT_USAGE


class UsageError(WatcherError):
    """The command line is wrong, or an operator command cannot do what was asked."""

    exit_code = EXIT_USAGE


class TransientError(WatcherError):
    """Something outside is unreachable for now; a later check may succeed."""

    exit_code = EXIT_TRANSIENT
    transient = True


class RemoteUnreachable(TransientError):
    """`git ls-remote` or fetch could not reach the remote."""


class SupervisorUnreachable(TransientError):
    """Supervisord's XML-RPC interface did not answer."""


class LockHeld(TransientError):
    """Another watcher holds `.watcher/lock`."""


class GitError(WatcherError):
    """Git answered, but with an error (unknown ref, bad object)."""


class SupervisorFault(WatcherError):
    """Supervisord answered with a fault (bad program name, spawn error...)."""


class StepFailed(WatcherError):
    """A deploy step failed; carries the step name and the tail of its output."""

    def __init__(
        self, step: str, message: str, output_tail: str = "", *, timed_out: bool = False
    ) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message
        self.output_tail = output_tail
        self.timed_out = timed_out


class Interrupted(WatcherError):
    """The daemon is stopping: a step before the switch was cut short. Not the commit's
    fault, so it is not marked bad; the next start deploys it again."""


# -- [fleet] (DESIGN §8) ------------------------------------------------------------------
class FleetUnreachable(TransientError):
    """Redis did not answer (or refused us): no migration and no switch happen."""


class FleetWaitTimeout(TransientError):
    """Another server's migration or rollout took longer than `fleet.wait`; the next check
    tries again, and the live release keeps serving."""
