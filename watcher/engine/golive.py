"""Going live: switch `current`, reload the app over Supervisord, health-check it.

Used by a deploy, by its automatic rollback, by `watcher rollback` and by the recovery of an
interrupted deploy, so all of them switch and reload the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import structlog

from watcher.config import Config, read_secret
from watcher.engine.bluegreen import BlueGreen
from watcher.engine.steps import StepLog
from watcher.errors import TransientError, WatcherError
from watcher.log import register_secret
from watcher.parts import releases
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
    def __init__(self, cfg: Config, layout: Layout,
                 supervisor_factory: Callable[[Config], Supervisor] = connect) -> None:
        self.cfg = cfg
        self.layout = layout
        self.factory = supervisor_factory
        self.bluegreen = BlueGreen(cfg) if cfg.bluegreen is not None else None

    @property
    def colour(self) -> str:
        """The live blue/green colour ("" without [bluegreen], or unknown: then Supervisord
        is asked). Set from state.json before going live; read after to record it."""
        return self.bluegreen.colour if self.bluegreen is not None else ""

    @colour.setter
    def colour(self, value: str) -> None:
        if self.bluegreen is not None:
            self.bluegreen.colour = value

    @contextlib.contextmanager
    def supervisor(self) -> Iterator[Supervisor]:
        sup = self.factory(self.cfg)
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

    def reload(self, mode: str, sha: str = "") -> None:
        """HUP (code only), or stop+start (new venv) every program; wait for RUNNING.

        With [bluegreen] the colours go first: `hup` HUPs the live one, any other mode
        (`restart`, `bluegreen`) swaps them, health-checking the new one for `sha` before the
        old one stops. `supervisor.programs` (workers) are then reloaded as without it.
        """
        rpc_mode = "hup" if mode == "hup" else "restart"
        programs = list(self.cfg.supervisor.programs)
        with self.supervisor() as sup:
            if self.bluegreen is not None:
                colour = self.bluegreen.reload(sup, mode, sha)
                log.info("reload.done", colour=colour, mode=mode)
            for program in programs:
                info = sup.reload(program, rpc_mode, self.cfg.supervisor.start_timeout)
                log.info("reload.done", program=program, mode=rpc_mode, pid=info.pid)

    def health(self, sha: str) -> None:
        bg = self.bluegreen
        live = bg.by_name(bg.colour) if bg is not None else None
        if bg is not None and live is not None:
            took = bg.check(live, sha)
            log.info("health.ok", url=live.health_url, colour=live.name, seconds=round(took, 2))
        url = self.cfg.health.url
        if not url:
            return
        took = wait_healthy(url, timeout=self.cfg.health.timeout,
                            expect=sha if self.cfg.health.expect_revision else None,
                            interval=self.cfg.health.interval)
        log.info("health.ok", url=url, seconds=round(took, 2))

    def go_live(self, name: str, sha: str, mode: str, steps: StepLog, prefix: str = "") -> None:
        with steps.step(f"{prefix}switch", release=name):
            releases.switch(self.layout, name)
        with steps.step(f"{prefix}reload", mode=mode):
            self.reload(mode, sha)
        if self.cfg.health.url or self.bluegreen is not None:
            with steps.step(f"{prefix}health"):
                self.health(sha)
