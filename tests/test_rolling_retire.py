"""engine/rolling.py against a real Gunicorn master serving the example app, signalled
directly (no supervisord between: the TTOUs follow each other as fast as the evidence
allows). A TTOU lost to signal coalescing would leave an old worker serving old code, so
after each rolling reload exactly the workers it added must remain, as many as configured."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.site import EXAMPLE
from support.supervisord import free_port

from watcher.engine import rolling
from watcher.parts import gunicorn
from watcher.parts.supervisor_rpc import RUNNING, ProcessInfo

GUNICORN = Path(sys.executable).parent / "gunicorn"
# A slow request for the busy-worker case (the worker serving it says so in the app's
# directory, its cwd); every other path is the example app.
SLOW_APP = '''
import os, time
from mysite.wsgi import application

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        open(f"busy-{os.getpid()}", "w").close()
        time.sleep(float(environ["QUERY_STRING"]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slow\\n"]
    return application(environ, start_response)
'''


class Master:
    """A Gunicorn master, and the two supervisord calls a rolling reload makes of it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, app: Path) -> None:
        self.proc, self.port, self.app, self.sent = proc, port, app, list[str]()
        self.before_ttou: list[int] = []  # the workers when the first TTOU went

    def info(self, program: str) -> ProcessInfo:
        return ProcessInfo(program, program, RUNNING, self.proc.pid, 0, "")

    def signal(self, program: str, name: str) -> None:
        if name == "TTOU" and "TTOU" not in self.sent:
            self.before_ttou = self.children()
        self.sent.append(name)
        os.kill(self.proc.pid, getattr(signal, f"SIG{name}"))

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def settled(self, n: int, timeout: float = 30.0) -> bool:
        """n workers, all serving, none left to reap."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (gunicorn.workers(self.proc.pid) == gunicorn.Workers(n, n)
                    and len(self.children()) == n):
                return True
            time.sleep(0.02)
        return False


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[int], Master]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start_(n: int) -> Master:
        app = tmp_path / "app"
        shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("__pycache__", "data"))
        (app / "data").mkdir()
        (app / "slowapp.py").write_text(SLOW_APP)
        port = free_port()
        proc = subprocess.Popen(
            [str(GUNICORN), "--chdir", str(app), "-c", str(app / "gunicorn.conf.py"),
             "slowapp:app"],
            env={"PATH": os.environ["PATH"], "GUNICORN_BIND": f"127.0.0.1:{port}",
                 "GUNICORN_WORKERS": str(n)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(proc)
        master = Master(proc, port, app)
        assert master.settled(n, timeout=60)
        return master

    yield start_
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_rolling_reloads_in_a_row_leave_exactly_the_new_workers(
        start: Callable[[int], Master]) -> None:
    """Five rolling reloads of a 3-worker master: each sends 3 TTINs and 3 TTOUs (none
    resent), lists the old workers oldest first, and leaves exactly the 3 workers it added."""
    master = start(3)
    for _ in range(5):
        old = master.children()
        assert [w.pid for w in gunicorn.children(master.proc.pid) or []] == old
        master.sent.clear()
        assert rolling.rolling_reload(master, "mysite", 30.0)  # type: ignore[arg-type]
        assert master.sent == ["TTIN"] * 3 + ["TTOU"] * 3
        assert master.settled(3)
        added = [pid for pid in master.before_ttou if pid not in old]
        assert len(added) == 3 and master.before_ttou == old + added
        assert master.children() == added


def test_a_busy_old_worker_delays_the_next_ttou_but_never_loses_one(
        start: Callable[[int], Master], monkeypatch: pytest.MonkeyPatch) -> None:
    """Both old workers of two serve a slow request: neither closes its heartbeat before
    the request ends, so each TTOU waits RETIRE_WAIT_S as it did before the exits overlapped;
    once the requests end, only the new workers remain."""
    monkeypatch.setattr(rolling, "RETIRE_WAIT_S", 0.5)
    master = start(2)
    old = master.children()
    answers: list[bytes] = []
    url = f"http://127.0.0.1:{master.port}/slow?5"
    slow = [threading.Thread(target=lambda: answers.append(urllib.request.urlopen(url).read()))
            for _ in old]
    for thread in slow:
        thread.start()
    deadline = time.monotonic() + 30
    while not all((master.app / f"busy-{pid}").exists() for pid in old):  # one each
        assert time.monotonic() < deadline
        time.sleep(0.02)
    began = time.monotonic()
    assert rolling.rolling_reload(master, "mysite", 30.0)  # type: ignore[arg-type]
    assert time.monotonic() - began >= 2 * 0.5
    assert master.sent.count("TTOU") == 2
    for thread in slow:
        thread.join(timeout=30)
    assert answers == [b"slow\n"] * 2  # served to the end by the old workers
    assert master.settled(2)
    assert master.children() == [pid for pid in master.before_ttou if pid not in old]
