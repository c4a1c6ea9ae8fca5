"""Blue/green reloads (DESIGN §4 `[bluegreen]`): two Supervisord programs running Gunicorn
from `<root>/current` on their own ports, both in Nginx's upstream, one live at a time.

A swap runs after `current` was switched: start the idle colour (it boots the new release and
venv), health-check it on its own URL for the new sha (from the start, not after Supervisord's
`startsecs`: `_come_up`), wait `SETTLE_S` so Nginx has forgotten
the failures it counted against the idle port while it was down, then stop the old colour
(Supervisord's stop waits for Gunicorn's graceful shutdown: requests in flight finish, new
connections are refused and Nginx passes them to the new colour). If the idle colour does not
come up healthy it is stopped again and the old colour, never touched, keeps serving: the
`SwapAbandoned` error names it, and the rollback that follows passes it back as `keep`, so
it only has to switch `current` back.

With `bluegreen.publish` (the shipped setup), Nginx's upstream is not the two ports but one
path, a symlink to the live colour's own unix socket (parts/publish.py). The swap points it at
the idle colour only after that colour passed its health check, waits `DRAIN_S` for the
connections made just before, and stops the old colour: Nginx never reaches a colour watcher
has not checked, and no settle is needed. Before any colour is stopped the link is pointed
at the one kept, and `reconcile` re-points a link that reaches no socket (after a reboot).

A code-only change reloads the live colour in place (HUP or rolling): Gunicorn starts fresh
workers from the new release. Once the release its master started in was pruned (rolling
reloads never move a master), the colours are swapped instead: a HUP would kill that master.

Which colour is live: the one state.json recorded, checked against Supervisord, which wins.
After a reboot only the autostart colour runs (see supervisor/conf.d-bluegreen/), whatever
state says. If both run, the recorded one is taken as live and the other is stopped.

Crash points: a kill -9 of watcher after the idle colour started and before the old one
stopped leaves both running, `current` on a release state.json does not know. The next run's
recovery switches `current` back and reloads: both up, so the recorded (old) colour is live,
the other is stopped and started afresh on the old release, then the old colour stops; one
version serves again. A kill after the stop but before state.json is written leaves only the
new colour running: Supervisord's answer wins over the recorded colour.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass

import structlog

from watcher.config import Config
from watcher.engine.rolling import master_dir_gone, reload_program
from watcher.errors import StepFailed, WatcherError
from watcher.parts.health import wait_healthy
from watcher.parts.publish import SocketLink
from watcher.parts.supervisor_rpc import RUNNING, STARTING, STOPPED_STATES, Supervisor

log = structlog.get_logger()
NAMES = ("blue", "green")
# `bluegreen.settle` (default 2.5 s) must exceed the `fail_timeout` of the upstream servers
# in Nginx + 1 s (Nginx counts it in whole seconds; examples/nginx/mysite.conf uses 1s): a
# port Nginx counted as failed is skipped that long, and if the new colour were still skipped
# when the old one stops, Nginx would find no live upstream and answer 502. Counted from the
# new colour's first healthy answer, after which Nginx cannot count a refused connection
# against it any more.
# Supervisord SIGKILLs a program after its stopwaitsecs (30 in the shipped configs); wait a
# little longer than that for the old colour's graceful stop.
STOP_TIMEOUT_S = 45.0
# With `bluegreen.publish`: after the link names the new colour, the old one keeps its
# listener this long before it is stopped, so connections Nginx made just before the rename
# are accepted and served, not reset by the stop.
DRAIN_S = 0.2


def published_link(cfg: Config) -> SocketLink | None:
    """`bluegreen.publish` with each colour's socket, or None without it."""
    bg = cfg.bluegreen
    if bg is None or not bg.publish:
        return None
    return SocketLink(bg.publish, dict(zip(NAMES, bg.sockets, strict=True)))


@dataclass(frozen=True)
class Colour:
    name: str  # "blue" | "green"
    program: str  # its Supervisord program
    health_url: str  # its own Gunicorn, not through Nginx


class SwapAbandoned(StepFailed):
    """The idle colour did not come up healthy and was stopped again; `serving`, the old
    colour, was never touched and still serves the old release ("" when none ran)."""

    def __init__(self, message: str, serving: str) -> None:
        super().__init__("health", message)
        self.serving = serving


class BlueGreen:
    """The colours' side of a reload. The live colour is passed in (`recorded`, from
    state.json; "" = unknown, ask Supervisord) and the colour serving afterwards returned."""

    def __init__(self, cfg: Config) -> None:
        if cfg.bluegreen is None:
            raise ValueError("blue/green needs a [bluegreen] section")
        self.cfg = cfg
        bg = cfg.bluegreen
        self.colours = tuple(Colour(n, p, u) for n, p, u in
                             zip(NAMES, bg.programs, bg.health_urls, strict=True))
        self.settle = bg.settle
        self.link = published_link(cfg)

    # -- queries -------------------------------------------------------------------------
    def by_name(self, name: str) -> Colour | None:
        return next((c for c in self.colours if c.name == name), None)

    def other(self, colour: Colour) -> Colour:
        return self.colours[1] if colour is self.colours[0] else self.colours[0]

    def find_live(self, sup: Supervisor,
                  recorded: str) -> tuple[Colour | None, list[Colour]]:
        """The live colour, and the other one when it is not down (to be stopped: it is
        RUNNING too, or STARTING/BACKOFF and could come up serving another version)."""
        states = {c.name: sup.info(c.program).statename for c in self.colours}
        known = self.by_name(recorded)
        up = [c for c in self.colours if states[c.name] == RUNNING
              or (c is known and states[c.name] == STARTING)]  # swapped to, inside startsecs
        if not up:
            if known is not None:
                log.warning("bluegreen.none_running", recorded=recorded)
            return None, []
        if len(up) == 1:
            live = up[0]
            if known is not None and known is not live:
                log.warning("bluegreen.state_disagrees", recorded=recorded, running=live.name)
        else:
            live = known or self.colours[0]
            log.warning("bluegreen.both_running", live=live.name)
        other = self.other(live)
        return live, ([] if states[other.name] in STOPPED_STATES else [other])

    # -- reloads -------------------------------------------------------------------------
    def reload(self, sup: Supervisor, mode: str, sha: str, recorded: str,
               keep: str = "") -> str:
        """`hup`/`rolling`: reload the live colour that way; anything else: swap. `keep`:
        the colour a failed swap left serving this very release (nothing to restart).
        Returns the live colour."""
        live, extra = self.find_live(sup, recorded)
        if live is not None and mode in ("hup", "rolling") and keep != live.name \
                and master_dir_gone(sup, live.program):
            # A HUP would kill its master, a stop and start would serve the new release
            # unchecked for startsecs: the idle colour is started and checked instead.
            log.warning("bluegreen.master_dir_gone", colour=live.name, action="swap")
            mode = "bluegreen"
        if live is None or (mode not in ("hup", "rolling") and keep != live.name):
            live = self._swap(sup, live, sha, recorded)  # restarts (so replaces) any extra
        else:
            if keep == live.name:
                log.info("bluegreen.kept", colour=live.name,
                         reason="the failed swap never touched it: it serves this release")
            else:
                if sup.info(live.program).statename == STARTING:  # swapped to moments ago
                    sup.wait_running(live.program, self.cfg.supervisor.start_timeout)
                reload_program(sup, live.program, "rolling" if mode == "rolling" else "hup",
                               self.cfg.supervisor.start_timeout)
                log.info("bluegreen.reloaded", colour=live.name, program=live.program, mode=mode)
            self.publish(live)
            for colour in extra:
                sup.stop(colour.program, STOP_TIMEOUT_S)
        return live.name

    def publish(self, colour: Colour) -> None:
        """Point `bluegreen.publish` at `colour` (no-op without it, or when it already
        does): from the next connect on, Nginx reaches only that colour."""
        if self.link is not None and self.link.point(colour.name):
            log.info("bluegreen.published", colour=colour.name, path=str(self.link.path))

    def unpublished(self) -> bool:
        """Does the published link reach no listening socket (after a reboot only blue
        autostarts and the link may name green; a colour crashed)? One local connect."""
        return self.link is not None and not self.link.answers()

    def reconcile(self, sup: Supervisor, recorded: str) -> None:
        """Point the published link at the colour that runs."""
        live, _ = self.find_live(sup, recorded)
        if live is not None:
            log.warning("bluegreen.republish", colour=live.name,
                        reason="the published socket did not answer")
            self.publish(live)

    def _swap(self, sup: Supervisor, live: Colour | None, sha: str, recorded: str) -> Colour:
        idle = self.other(live) if live else (self.by_name(recorded) or self.colours[0])
        log.info("bluegreen.start", idle=idle.name, live=live.name if live else None)
        if live is not None:
            self.publish(live)  # a killed swap may have left the link on the idle colour
        if sup.info(idle.program).statename not in STOPPED_STATES:
            sup.stop(idle.program, STOP_TIMEOUT_S)  # STARTING/BACKOFF leftovers: start afresh
        if self.link is not None:
            self.link.prepare()
        try:  # health-checked while Supervisord counts startsecs (see `_come_up`)
            took = self._come_up(sup, idle, sha)
        except WatcherError as exc:
            try:
                sup.stop(idle.program, STOP_TIMEOUT_S)
            except WatcherError as stop_exc:
                log.error("bluegreen.stop_failed", colour=idle.name, error=str(stop_exc))
            message = exc.message if isinstance(exc, StepFailed) else str(exc)
            raise SwapAbandoned(f"{idle.name} ({idle.program}) did not come up on the new "
                                f"release, {live.name if live else 'nothing'} keeps serving: "
                                f"{message}", serving=live.name if live else "") from exc
        log.info("bluegreen.healthy", colour=idle.name, seconds=round(took, 2),
                 state=sup.info(idle.program).statename)  # STARTING: inside its startsecs
        self.publish(idle)  # only now can Nginx reach it
        if live is not None:
            if self.link is not None:
                time.sleep(DRAIN_S)
            else:
                self._settle(sha)
            sup.stop(live.program, STOP_TIMEOUT_S)
            log.info("bluegreen.swapped", live=idle.name, stopped=live.name)
        return idle

    def _come_up(self, sup: Supervisor, idle: Colour, sha: str) -> float:
        """Start the idle colour and health-check it at once, not after Supervisord's
        `startsecs` (5 s in the shipped configs): it serves once its health URL answers with
        the new sha, usually well inside that. Its process leaving STARTING for BACKOFF or
        a stopped state (an app that cannot be imported) ends the wait at once. It may
        still be STARTING when the swap ends: `find_live` counts the recorded colour in
        STARTING as up, and a reload of it waits for RUNNING first."""
        sup.launch(idle.program)
        return self.check(idle, sha, starting=sup)

    def _settle(self, sha: str) -> None:
        """Both colours serve for `bluegreen.settle`, so Nginx tries the new colour again
        before the old one stops. With `bluegreen.ready_url` (the health path through Nginx)
        the wait ends as soon as Nginx answers it from the new release: Nginx (its upstream
        state shared by every worker through the `zone`) routes to the new colour again."""
        ready = self.cfg.bluegreen.ready_url if self.cfg.bluegreen else ""
        if not ready or not sha:
            time.sleep(self.settle)
            return
        started = time.monotonic()
        deadline = started + self.settle
        while time.monotonic() < deadline:
            if _answers(ready, sha, min(1.0, deadline - time.monotonic())):
                log.info("bluegreen.ready", url=ready,
                         seconds=round(time.monotonic() - started, 2))
                return
            time.sleep(0.02)
        log.info("bluegreen.settled", seconds=self.settle, url=ready)

    def check(self, colour: Colour, sha: str, old: str = "", fail_fast: bool = True,
              starting: Supervisor | None = None) -> float:
        """Health-check one colour on its own URL; seconds it took. With `fail_fast`,
        `health.failures` 5xx in a row end it at once; answers naming `old` (a HUPed
        colour's old workers) do not count. `starting`: the colour was just launched, so
        the wait also covers its start (`supervisor.start_timeout`), polls more often, and
        ends at once when Supervisord reports it down."""
        health = self.cfg.health
        expect = health.expect_revision and bool(sha)
        timeout, interval = health.timeout, health.interval
        if starting is not None:
            timeout, interval = timeout + self.cfg.supervisor.start_timeout, min(interval, 0.1)
        return wait_healthy(colour.health_url, timeout=timeout,
                            expect=sha if expect else None, old=old if expect and old else None,
                            failures=health.failures if fail_fast else 0, interval=interval,
                            down=(lambda: starting.down(colour.program)) if starting else None)


def _answers(url: str, sha: str, timeout: float) -> bool:
    """One GET: does `url` answer 200 with `sha` in its body?"""
    try:
        with urllib.request.urlopen(url, timeout=max(timeout, 0.05)) as resp:  # noqa: S310
            return resp.status == 200 and sha in resp.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
