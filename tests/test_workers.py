"""supervisor.workers against a real supervisord: a warm restart (TERM, then stopwaitsecs,
never HUP), and `watcher check` confirming each worker program and its stop settings."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.configs import minimal_config
from support.fixtures import run_cli
from support.supervisord import SupervisordProcess, supervisord_factory

from watcher.parts.supervisor_rpc import Supervisor

# A stand-in worker: logs each signal it gets; on TERM it finishes its "task" (1.5 s), as a
# Celery worker's warm shutdown does, then exits.
WORKER = """\
import os, pathlib, signal, sys, time
log = pathlib.Path(sys.argv[1])
def note(text):
    with log.open("a") as fh:
        fh.write(f"{os.getpid()} {text} {time.time():.3f}\\n")
def term(*_):
    note("TERM")
    time.sleep(1.5)
    note("done")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
signal.signal(signal.SIGHUP, lambda *_: note("HUP"))
note("start")
while True:
    time.sleep(0.1)
"""


def worker_program(script: Path, log: Path, extra: str = "") -> str:
    return (f"command={sys.executable} {script} {log}\nautostart=true\nstartsecs=1\n"
            "stopwaitsecs=10\nstopasgroup=true\nkillasgroup=true\n" + extra)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SupervisordProcess, Path]]:
    base = tmp_path_factory.mktemp("workers")
    script = base / "worker.py"
    script.write_text(WORKER)
    factory = supervisord_factory(tmp_path_factory)
    make = next(factory)
    sv = make({"celery": worker_program(script, base / "celery.log"),
               "hupworker": worker_program(script, base / "hup.log", "stopsignal=HUP\n")})
    yield sv, base
    factory.close()


def wait_running(sup: Supervisor, name: str) -> None:
    sup.wait_running(name, 15)


def test_a_worker_restart_is_term_then_wait_never_hup(
        box: tuple[SupervisordProcess, Path]) -> None:
    """restart_workers sends TERM, waits while the worker finishes its task, then starts a
    new process; the worker never sees HUP."""
    sv, base = box
    sup = Supervisor(sv.url, timeout=5)
    try:
        wait_running(sup, "celery")
        old = sup.pid("celery")
        started = time.monotonic()
        (info,) = sup.restart_workers(["celery"], 15)
        assert time.monotonic() - started >= 1.5  # it waited for the running task
        assert info.statename == "RUNNING" and info.pid != old
    finally:
        sup.close()
    lines = [ln.split() for ln in (base / "celery.log").read_text().splitlines()]
    assert [(int(p), what) for p, what, _ in lines] == [
        (old, "start"), (old, "TERM"), (old, "done"), (info.pid, "start")]


def write_config(base: Path, sv: SupervisordProcess, workers: str,
                 programs: str = '["web"]') -> Path:
    return minimal_config(base, f"workers = {workers}\n", supervisor_url=sv.url,
                          programs=programs)


def test_check_confirms_each_worker_and_refuses_a_hup_stopsignal(
        box: tuple[SupervisordProcess, Path]) -> None:
    """`watcher check` prints ok for a worker that exists, FAIL for one supervisord does not
    know, and FAIL for a worker whose stopsignal is HUP."""
    sv, base = box
    config = write_config(base, sv, '["celery", "nosuch", "hupworker"]')
    res = run_cli("check", "--config", str(config))
    out = res.stdout
    assert "ok    worker celery: RUNNING" in out, out
    assert "FAIL  worker nosuch: no program named nosuch" in out, out
    assert "FAIL  worker hupworker: stopsignal=HUP" in out, out
    assert "Traceback" not in res.stderr


def test_a_worker_that_is_a_blue_green_colour_is_a_config_error(tmp_path: Path) -> None:
    """With [bluegreen], a worker must be in neither colour: one listed in
    bluegreen.programs too is refused at load, naming it (exit 2)."""
    config = minimal_config(tmp_path, """workers = ["mysite_blue"]
[bluegreen]
programs = ["mysite_blue", "mysite_green"]
health_urls = ["http://127.0.0.1:8001/healthz", "http://127.0.0.1:8002/healthz"]
""", programs="[]")
    res = run_cli("check", "--config", str(config))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "mysite_blue is in supervisor.workers and also a web program" in res.stderr


def test_a_worker_listed_as_a_web_program_is_a_config_error(
        box: tuple[SupervisordProcess, Path]) -> None:
    """A program in both supervisor.programs and supervisor.workers is refused (exit 2)."""
    sv, base = box
    config = write_config(base, sv, '["celery"]', programs='["celery"]')
    res = run_cli("check", "--config", str(config))
    assert res.returncode == 2
    assert "celery is in supervisor.workers and also a web program" in res.stderr + res.stdout
