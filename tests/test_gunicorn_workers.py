"""parts/gunicorn.py against a real Gunicorn master serving the example app: the workers it
counts, and when the ones added by TTIN have loaded the app."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from support.site import EXAMPLE
from support.supervisord import free_port

from watcher.parts.gunicorn import Workers, dir_gone, workers

GUNICORN = Path(sys.executable).parent / "gunicorn"


def until(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_workers_counts_booted_and_added_workers(tmp_path: Path) -> None:
    """A master with 2 workers reads (2, 2) once they loaded the app; after TTIN a third is
    counted at once but ready only once it loaded the app; a pid that is no Gunicorn master
    reads None."""
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("__pycache__", "data"))
    (app / "data").mkdir()
    wsgi = app / "mysite" / "wsgi.py"  # a slow app import: the added worker is seen booting
    wsgi.write_text("import time\ntime.sleep(0.5)\n" + wsgi.read_text())
    proc = subprocess.Popen(
        [str(GUNICORN), "--chdir", str(app), "-c", str(app / "gunicorn.conf.py")],
        env={"PATH": os.environ["PATH"], "GUNICORN_BIND": f"127.0.0.1:{free_port()}",
             "GUNICORN_WORKERS": "2"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert until(lambda: workers(proc.pid) == Workers(2, 2))
        os.kill(proc.pid, signal.SIGTTIN)
        seen: list[Workers | None] = []
        assert until(lambda: seen.append(w := workers(proc.pid)) or w == Workers(3, 3))
        assert Workers(3, 2) in seen  # counted before it was ready
        assert workers(os.getpid()) is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_dir_gone_tells_a_process_whose_directory_was_deleted(tmp_path: Path) -> None:
    """False while the process's working directory exists, also after a rename (a release
    moved to the trash); True once it is deleted; False for a pid /proc does not know."""
    release = tmp_path / "release"
    release.mkdir()
    proc = subprocess.Popen(["sleep", "60"], cwd=release)
    try:
        assert until(lambda: os.readlink(f"/proc/{proc.pid}/cwd") == str(release))
        assert not dir_gone(proc.pid)
        trash = tmp_path / ".trash-release"
        release.rename(trash)
        assert not dir_gone(proc.pid)
        trash.rmdir()
        assert dir_gone(proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert not dir_gone(proc.pid)  # reaped: no /proc entry
