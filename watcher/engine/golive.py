"""Going live: switch `current`, reload the app over Supervisord, health-check it.

Used by a deploy, by its automatic rollback, by `watcher rollback` and by the recovery of an
interrupted deploy, so all of them switch and reload the same way. The blue/green colour is a
value: the caller passes the colour it knows to be live and gets back the one serving now.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import cast

import structlog

from watcher.config import Config, read_secret
from watcher.engine.bluegreen import BlueGreen, SwapAbandoned
from watcher.engine.plan import Step
from watcher.engine.rolling import reload_program
from watcher.engine.steps import StepLog
from watcher.errors import StepFailed, TransientError, WatcherError
from watcher.kinds import ReloadMode
from watcher.log import register_secret
from watcher.parts import procs, releases
from watcher.parts.health import wait_healthy
from watcher.parts.releases import Layout
from watcher.parts.supervisor_rpc import Supervisor

log = structlog.get_logger()


def connect(cfg: Config) -> Supervisor:
    password = read_secret(cfg.supervisor.password_file, "supervisor.password_file")
    register_secret(password)
    return Supervisor(cfg.supervisor.url, cfg.supervisor.username, password,
                      timeout=cfg.supervisor.timeout)


class Switcher:
    def __init__(self, cfg: Config, layout: Layout) -> None:
        self.cfg = cfg
        self.layout = layout
        self.bluegreen = BlueGreen(cfg) if cfg.bluegreen is not None else None

    @contextlib.contextmanager
    def supervisor(self) -> Iterator[Supervisor]:
        sup = connect(self.cfg)
        try:
            yield sup
        finally:
            sup.close()

    def ensure_reachable(self) -> None:
        """Raise SupervisorUnreachable (transient) when supervisord does not answer, so a
        deploy or rollback stops before it switches anything. A fault in the answer is left
        to the reload step, which reports it."""
        try:
            with self.supervisor() as sup:
                sup.check()
        except TransientError:
            raise
        except WatcherError:
            pass  # it answered with a fault, or a setting is wrong: the reload step says so

    def reload(self, mode: ReloadMode, sha: str, colour: str, keep: str = "") -> str:
        """Rolling or HUP (code only), or stop+start (new venv) every program; wait for
        RUNNING.

        With [bluegreen] the colours go first: `hup`/`rolling` reload the live one (or swap,
        when its master's start release was pruned), any other mode (`restart`,
        `bluegreen`) swaps them, health-checking the new one for `sha` from its start, before
        the old one stops. `supervisor.programs` are then reloaded as without it. Returns the
        colour serving now ("" without [bluegreen]); `colour` is the one live before.
        """
        programs = list(self.cfg.supervisor.programs)
        with self.supervisor() as sup:
            if self.bluegreen is not None:
                colour = self.bluegreen.reload(sup, mode, sha, colour, keep)
                log.info("reload.done", colour=colour, mode=mode)
            for program in programs:
                reload_program(sup, program, mode, self.cfg.supervisor.start_timeout)
        return colour if self.bluegreen is not None else ""

    def reconcile(self, colour: str) -> None:
        """With `bluegreen.publish`: a link that reaches no socket is pointed at the colour
        Supervisord runs (`colour`: the one state.json records). Asks Supervisord only then."""
        bg = self.bluegreen
        if bg is None or not bg.unpublished():
            return
        with self.supervisor() as sup:
            bg.reconcile(sup, colour)

    def serving_workers(self) -> procs.Snapshot:
        """The workers of every web program's Gunicorn master now: after a reload, the old
        code serves until all of them are gone (step 12b waits for that)."""
        names = list(self.cfg.supervisor.programs)
        if self.bluegreen is not None:
            names += [c.program for c in self.bluegreen.colours]
        with self.supervisor() as sup:
            masters = {info.pid for info in map(sup.info, names) if info.pid}
        return procs.children(masters)

    def health(self, sha: str, colour: str, old: str = "") -> None:
        """Step 12. `old`: the sha of the release this one replaces; its answers mean "not
        ready yet", while `health.failures` 5xx in a row from the new one fail at once.
        Without `old` (going back to a release after a failure, recovery, the first deploy)
        the wait is not cut short: a 5xx then may come from the failed release's last
        workers, and there is nothing better to go to."""
        bg = self.bluegreen
        live = bg.by_name(colour) if bg is not None else None
        if bg is not None and live is not None:
            took = bg.check(live, sha, old, fail_fast=bool(old))
            log.info("health.ok", url=live.health_url, colour=live.name, seconds=round(took, 2))
        url = self.cfg.health.url
        if not url:
            return
        health = self.cfg.health
        took = wait_healthy(url, timeout=health.timeout,
                            expect=sha if health.expect_revision else None,
                            old=old if health.expect_revision and old else None,
                            failures=health.failures if old else 0, interval=health.interval)
        log.info("health.ok", url=url, seconds=round(took, 2))

    def restart_workers(self) -> None:
        """supervisor.workers stopped (their stopsignal, TERM: a warm shutdown; then
        supervisord's stopwaitsecs) and started on the release `current` names, all at
        once; never HUPed, and in neither blue/green colour. A worker that does not reach
        RUNNING raises SupervisorFault naming it (the deploy rolls back)."""
        with self.supervisor() as sup:
            for info in sup.restart_workers(list(self.cfg.supervisor.workers),
                                            self.cfg.supervisor.start_timeout):
                log.info("workers.restarted", program=f"{info.group}:{info.name}",
                         pid=info.pid)

    def go_live(self, name: str, sha: str, plan: Sequence[Step], steps: StepLog, *,
                colour: str, keep: str = "", prefix: str = "", old: str = "") -> str:
        """Run the go-live steps of a plan (`plan.go_live_steps`: switch, reload, health,
        workers) for release `name`, logged under `prefix` on the rollback and recovery
        paths. `colour` is the blue/green colour live before; returns the one serving now
        ("" without it).
        `old` is the sha of the release being replaced, given when going forward: it turns
        on the fail-fast of `health.failures` (see `health`).
        Raises GoLiveFailed, which carries the colour serving at the failure."""
        try:
            for step in plan:
                with steps.step(f"{prefix}{step.name}", step.reason, action=step.action,
                                release=name):
                    if step.name == "switch":
                        releases.switch(self.layout, name)
                    elif step.name == "reload":
                        colour = self.reload(cast(ReloadMode, step.action), sha, colour, keep)
                    elif step.name == "health":
                        self.health(sha, colour, old)
                    elif step.name == "workers":
                        self.restart_workers()
        except WatcherError as exc:
            raise GoLiveFailed(exc, colour if self.bluegreen is not None else "") from exc
        return colour if self.bluegreen is not None else ""


class GoLiveFailed(StepFailed):
    """A go-live step failed. `colour`: the blue/green colour serving at that moment;
    `kept`: the colour a failed swap left serving the previous release, untouched (going
    back to that release then needs no restart)."""

    def __init__(self, exc: WatcherError, colour: str) -> None:
        if isinstance(exc, StepFailed):
            super().__init__(exc.step, exc.message, exc.output_tail, timed_out=exc.timed_out)
        else:
            super().__init__("reload", str(exc))
        self.kept = exc.serving if isinstance(exc, SwapAbandoned) else ""
        self.colour = self.kept or colour
