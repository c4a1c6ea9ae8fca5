"""Old Gunicorn workers seen through /proc (watcher.parts.procs), with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from watcher.parts import procs

FORKER = """
import os, sys, time
kids = [os.fork() for _ in range(2)]
if 0 in kids:
    time.sleep(float(sys.argv[1]))
    os._exit(0)
print("ready", flush=True)
for _ in kids:
    os.wait()
"""


def test_children_are_taken_and_waited_for_until_gone() -> None:
    """The children of a parent are snapshotted, and waiting ends when they have exited."""
    parent = subprocess.Popen([sys.executable, "-c", FORKER, "1.0"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        snap = procs.children({parent.pid})
        assert len(snap) == 2
        assert procs.running(snap) == sorted(pid for pid, _ in snap)
        started = time.monotonic()
        assert procs.wait_gone(snap, timeout=20) == []
        assert time.monotonic() - started < 15
    finally:
        parent.kill()
        parent.wait()


def test_wait_gives_up_at_the_timeout_and_names_what_still_runs() -> None:
    """Waiting is bounded: what still runs at the timeout is returned."""
    parent = subprocess.Popen([sys.executable, "-c", FORKER, "30"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        snap = procs.children({parent.pid})
        assert procs.wait_gone(snap, timeout=0.3) == sorted(pid for pid, _ in snap)
    finally:
        for pid, _ in procs.children({parent.pid}):
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()
