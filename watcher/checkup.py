"""`watcher check`: validate the config and reach every part, with a line per check."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import requests

from watcher.config import Config, FleetConfig, ForgeConfig, is_loopback
from watcher.delivery.forge import ForgeNotifier
from watcher.delivery.retry import Failed as ForgeHTTPError
from watcher.engine.bluegreen import published_link
from watcher.engine.golive import connect
from watcher.errors import (
    EXIT_OK,
    EXIT_TRANSIENT,
    EXIT_USAGE,
    StepFailed,
    TransientError,
    WatcherError,
)
from watcher.log import scrub
from watcher.parts.gitsource import GitSource
from watcher.parts.releases import Layout
from watcher.parts.runner import clean_env, run
from watcher.parts.supervisor_rpc import Supervisor
from watcher.parts.venvs import installer_version, interpreter_id


class _Checks:
    """`soft`: before the parts exist (`watcher init`), a failure is only a warning."""

    def __init__(self, soft: bool = False) -> None:
        self.code = EXIT_OK
        self.soft = soft

    def ok(self, what: str, detail: str = "") -> None:
        print(scrub(f"ok    {what}{': ' + detail if detail else ''}"))

    def warn(self, what: str, detail: str) -> None:
        print(scrub(f"warn  {what}: {detail}"))

    def fail(self, what: str, exc: Exception | str) -> None:
        if self.soft:
            self.warn(what, f"{exc} (expected until NEXT-STEPS.md is done)")
            return
        print(f"FAIL  {what}: {scrub(str(exc))}")
        transient = isinstance(exc, TransientError)
        code = EXIT_TRANSIENT if transient else EXIT_USAGE
        self.code = max(self.code, code) if self.code else code


def run_checks(cfg: Config, *, soft: bool = False) -> int:
    """Every check, a line each; the exit code. `soft` (init): failures become warnings."""
    c = _Checks(soft)
    c.ok("config", str(cfg.path))
    try:
        sha = GitSource(cfg.git, Layout(cfg.app.root).repo).remote_head()
        c.ok("remote", f"{cfg.git.branch} at {sha[:12]}")
    except WatcherError as exc:
        c.fail("remote", exc)
    _supervisor(cfg, c)
    try:
        ident = interpreter_id(cfg.build.python)
        run([cfg.build.python, "-m", "venv", "--help"], step="check", timeout=30,
            env=clean_env())
        c.ok("build python", f"{cfg.build.python}: {ident}")
    except WatcherError as exc:
        c.fail("build python", exc)
    try:
        c.ok("installer", f"{cfg.build.installer}: "
             f"{installer_version(cfg.build.installer, cfg.build.python)}")
    except StepFailed as exc:
        c.fail("installer", exc.message)
    if cfg.health.url:
        try:
            resp = requests.get(cfg.health.url, timeout=5)
            if resp.status_code == 200:
                c.ok("health url", f"{cfg.health.url} answers 200")
            else:
                c.warn("health url", f"{cfg.health.url} answers {resp.status_code}")
        except requests.RequestException as exc:
            c.warn("health url", f"{cfg.health.url} unreachable ({type(exc).__name__})"
                   " - fine before the first deploy")
    if cfg.forge is not None:
        _forge(cfg.forge, cfg.state_dir, c)
    _cleartext(cfg, c)
    _zero_loss(cfg, c)
    _published(cfg, c)
    if cfg.fleet is not None:
        _fleet(cfg, cfg.fleet, c)
    root = cfg.app.root
    if not root.exists():
        c.warn("app root", f"{root} does not exist yet; the first deploy creates it")
    sys.stdout.flush()
    return c.code


def command_problems(command: str, current: str) -> list[str]:
    """What in a Gunicorn program's command line would make a HUP keep the old code."""
    problems = []
    if not re.search(rf"--chdir[ =]{re.escape(current)}(\s|$)", command):
        problems.append(f"command lacks --chdir {current}: a HUP would reload the old code")
    if "--preload" in command:
        problems.append("--preload keeps the old code across a HUP")
    return problems


def _cleartext(cfg: Config, c: _Checks) -> None:
    """Reports (and the report token) sent over plain http to another host go in the clear."""
    parts = urlsplit(cfg.report.url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        c.warn("report url", f"{cfg.report.url} is plain http to {parts.hostname}: reports "
                             "and report.token_file's token cross the network in the clear; "
                             "use https://")


def _zero_loss(cfg: Config, c: _Checks) -> None:
    """The trade of a setup without [bluegreen], said plainly (issue 12)."""
    if cfg.bluegreen is not None or cfg.supervisor.reload == "hup":
        return
    c.warn("reload", "without [bluegreen], a deploy that changes the virtualenv stops and "
           "starts the app: requests that arrive until Gunicorn is up again fail (502 through "
           "Nginx; 40 of ~800 at 200 req/s in BENCHMARKS.md). Code-only deploys lose none. "
           "For zero loss on every deploy add the blue/green pair "
           "(supervisor/conf.d-bluegreen/, [bluegreen] in watcher.toml)")


def _published(cfg: Config, c: _Checks) -> None:
    """With bluegreen.publish: which colour the link Nginx connects to names, and whether a
    connect through it reaches a listening Gunicorn (the next run re-points one that does
    not)."""
    link = published_link(cfg)
    if link is None:
        return
    colour = link.pointed() or "no colour"
    if link.answers():
        c.ok("published socket", f"{link.path} -> {colour}, answers")
    else:
        c.warn("published socket", f"{link.path} -> {colour}, nothing answers: Nginx gets "
               "502 until the next `watcher --once` or daemon check points it at the running "
               "colour (fine before the first deploy)")


def _supervisor(cfg: Config, c: _Checks) -> None:
    programs = list(cfg.supervisor.programs)
    if cfg.bluegreen is not None:
        programs += list(cfg.bluegreen.programs)
    try:
        sup = connect(cfg)
    except WatcherError as exc:
        c.fail("supervisord", exc)
        return
    try:
        state = sup.check()
        c.ok("supervisord", f"{scrub(cfg.supervisor.url)} is {state}")
        current = str(cfg.app.root / "current")
        for program in programs:
            try:
                info = sup.info(program)
            except WatcherError as exc:
                c.fail(f"program {program}", exc)
                continue
            c.ok(f"program {program}", info.statename)
            for problem in command_problems(sup.program_command(program) or "", current):
                c.warn(f"program {program}", problem)
        _workers(cfg, sup, c)
    except WatcherError as exc:
        c.fail("supervisord", exc)
    finally:
        sup.close()


def _workers(cfg: Config, sup: Supervisor, c: _Checks) -> None:
    """Each of supervisor.workers exists, and stops warmly (never on HUP), as a group."""
    for worker in cfg.supervisor.workers:
        what = f"worker {worker}"
        try:
            info = sup.info(worker)
        except WatcherError as exc:
            c.fail(what, exc)
            continue
        c.ok(what, info.statename)
        conf = sup.program_config(worker) or {}
        if conf.get("stopsignal") == signal.SIGHUP:
            c.fail(what, "stopsignal=HUP: a worker must get TERM (warm shutdown)")
        if conf and not (conf.get("stopasgroup") and conf.get("killasgroup")):
            c.warn(what, "set stopasgroup=true and killasgroup=true, or its pool processes "
                   "outlive a stop")


def _forge(forge: ForgeConfig, state_dir: Path, c: _Checks) -> None:
    """[forge]: the API answers, and the token may write statuses to forge.repo."""
    notifier = ForgeNotifier(forge, state_dir / "spool-forge", timeout_s=forge.timeout,
                             budget_s=max(forge.budget, 5.0))
    try:
        c.ok(f"forge {forge.type}", notifier.check())
    except ForgeHTTPError as exc:
        c.fail(f"forge {forge.type}", str(exc))
def _fleet(cfg: Config, fleet_cfg: FleetConfig, c: _Checks) -> None:
    """Reach Redis and say whether this server can write there (a read-only ACL user or
    replica would leave every deploy waiting, so it fails the check)."""
    from watcher.parts.fleet import Fleet

    try:
        fleet = Fleet(fleet_cfg, cfg.app.name)
        try:
            writable = fleet.probe()
        finally:
            fleet.close()
    except WatcherError as exc:
        c.fail("fleet redis", exc)
        return
    where = f"{scrub(fleet_cfg.redis_url)} as host {fleet.host}"
    if writable:
        c.ok("fleet redis", f"{where}: can write")
    else:
        c.fail("fleet redis", f"{where}: answers, but refuses writes (ACL or read-only "
                              "replica): no server could migrate or switch")
