"""`watcher check`: validate the config and reach every part, with a line per check."""

from __future__ import annotations

import re
import sys
from urllib.parse import urlsplit

import requests

from watcher.config import Config, is_loopback
from watcher.engine.golive import connect
from watcher.errors import EXIT_OK, EXIT_TRANSIENT, EXIT_USAGE, TransientError, WatcherError
from watcher.log import scrub
from watcher.parts.gitsource import GitSource
from watcher.parts.releases import Layout
from watcher.parts.runner import clean_env, run
from watcher.parts.venvs import interpreter_id


class _Checks:
    def __init__(self) -> None:
        self.code = EXIT_OK

    def ok(self, what: str, detail: str = "") -> None:
        print(scrub(f"ok    {what}{': ' + detail if detail else ''}"))

    def warn(self, what: str, detail: str) -> None:
        print(scrub(f"warn  {what}: {detail}"))

    def fail(self, what: str, exc: Exception | str) -> None:
        print(f"FAIL  {what}: {scrub(str(exc))}")
        transient = isinstance(exc, TransientError)
        code = EXIT_TRANSIENT if transient else EXIT_USAGE
        self.code = max(self.code, code) if self.code else code


def run_checks(cfg: Config) -> int:
    c = _Checks()
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
    _cleartext(cfg, c)
    root = cfg.app.root
    if not root.exists():
        c.warn("app root", f"{root} does not exist yet; the first deploy creates it")
    sys.stdout.flush()
    return c.code


def _cleartext(cfg: Config, c: _Checks) -> None:
    """Reports (and the report token) sent over plain http to another host go in the clear."""
    parts = urlsplit(cfg.report.url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        c.warn("report url", f"{cfg.report.url} is plain http to {parts.hostname}: reports "
                             "and report.token_file's token cross the network in the clear; "
                             "use https://")


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
            command = sup.program_command(program) or ""
            if not re.search(rf"--chdir[ =]{re.escape(current)}(\s|$)", command):
                c.warn(f"program {program}",
                       f"command lacks --chdir {current}: a HUP would reload the old code")
            if "--preload" in command:
                c.warn(f"program {program}", "--preload keeps the old code across a HUP")
    except WatcherError as exc:
        c.fail("supervisord", exc)
    finally:
        sup.close()
