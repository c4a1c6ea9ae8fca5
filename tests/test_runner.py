"""The one subprocess door: a step ends at its child's exit or its timeout, whatever its
descendants do, and its output costs bounded memory however long a line is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.errors import Interrupted, StepFailed
from watcher.parts import runner
from watcher.parts.run_failure import command_name

REPO_ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie is not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids a test expects to be gone; any left running are killed after it."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_background_grandchild_neither_stretches_the_step_nor_survives_it(
        strays: list[int]) -> None:
    """`sh -c 'sleep 20 & echo $!'` ends when sh exits (not 20 s later), and its background
    sleep is killed with the step."""
    started = time.monotonic()
    result = runner.run(["sh", "-c", "sleep 20 & echo $!"], step="hook", timeout=5)
    took = time.monotonic() - started
    sleeper = int(result.output.split()[-1])
    strays.append(sleeper)
    assert result.ok
    assert took < 1.5, f"the step took {took:.1f}s"
    assert wait_gone(sleeper), "the background sleep outlived its step"


def test_timeout_holds_with_a_grandchild_holding_the_pipe(strays: list[int]) -> None:
    """A child stuck with a grandchild that holds the output pipe times out on time, and
    the whole group is killed."""
    started = time.monotonic()
    with pytest.raises(StepFailed) as failed:
        runner.run(["sh", "-c", "sleep 30 & echo $!; sleep 30"], step="hook", timeout=1)
    took = time.monotonic() - started
    assert failed.value.timed_out
    assert 1.0 <= took < 2.0, f"the step took {took:.1f}s"
    sleeper = int(failed.value.output_tail.split()[-1])
    strays.append(sleeper)
    assert wait_gone(sleeper)


def test_a_setsid_grandchild_cannot_hold_the_step_open(strays: list[int]) -> None:
    """The documented limit: a descendant that calls setsid leaves the group and runs on,
    but the step still ends when its child exits; reading its output stops with it."""
    script = "setsid sh -c 'echo $$; sleep 20' & sleep 0.3; echo done"
    started = time.monotonic()
    result = runner.run(["sh", "-c", script], step="hook", timeout=5)
    took = time.monotonic() - started
    escaped = int(result.output.split()[0])
    strays.append(escaped)
    assert result.ok and result.output.endswith("done")
    assert took < 1.5, f"the step took {took:.1f}s"


def test_shutdown_cuts_a_step_whose_grandchild_holds_the_pipe(strays: list[int]) -> None:
    """A shutdown request ends a running step within a poll, grandchildren and all."""
    pid_file = Path(f"/tmp/watcher-runner-{os.getpid()}.pid")
    script = f"sleep 20 & echo $! > {pid_file}; wait"
    timer = threading.Timer(0.5, runner.CANCEL.set)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            runner.run(["sh", "-c", script], step="migrate", timeout=30)
    finally:
        runner.CANCEL.clear()
        timer.cancel()
    took = time.monotonic() - started
    sleeper = int(pid_file.read_text())
    pid_file.unlink()
    strays.append(sleeper)
    assert took < 1.5, f"the step took {took:.1f}s"
    assert wait_gone(sleeper)


def test_a_100_mb_line_costs_bounded_memory_and_keeps_its_tail() -> None:
    """One 100 MB output line is read in chunks: watcher's peak RSS stays far below the
    line's size, and the tail (the line's end and what follows) is what the report gets."""
    probe = textwrap.dedent("""
        import resource, sys
        from watcher.parts import runner
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        writer = "import sys; sys.stdout.write('x' * 100_000_000 + 'END\\\\nlast line\\\\n')"
        result = runner.run([sys.executable, "-c", writer], step="hook", timeout=60)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(before // 1024, peak // 1024, len(result.output), repr(result.output[-13:]))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, env=env, check=True).stdout.split(maxsplit=3)
    before_mb, peak_mb, length = int(out[0]), int(out[1]), int(out[2])
    assert peak_mb - before_mb < 10, f"RSS went from {before_mb} MB to {peak_mb} MB"
    assert length <= runner.TAIL_CHARS
    assert out[3].strip() == repr("END\nlast line")


@pytest.mark.parametrize(("argv", "name"), [
    ((".venv/bin/python", "manage.py", "migrate", "--noinput"), "manage.py migrate"),
    (("/usr/bin/setpriv", "--pdeathsig", "KILL", "--", "/srv/a/.venv/bin/python3",
      "manage.py", "migrate", "pages", "0002", "--noinput"), "manage.py migrate"),
    (("git", "-C", "/srv/a/repo", "fetch", "--prune", "origin"), "git fetch"),
    (("false",), "false"),
])
def test_a_failed_command_is_named_as_operators_know_it(argv: tuple[str, ...],
                                                         name: str) -> None:
    assert command_name(argv) == name


def test_a_failure_says_the_last_line_the_command_printed(tmp_path: Path) -> None:
    """`manage.py migrate exited with status 1: RuntimeError: ...`, scrubbed: the message is
    all a report, a forge status or a fleet-wide bad mark carries (not `python exited`)."""
    script = tmp_path / "manage.py"
    script.write_text("import sys\nprint('Applying pages.0005...', flush=True)\n"
                      "raise RuntimeError('backfill failed at postgres://app:canary-pw@db/x')\n")
    with pytest.raises(StepFailed) as err:
        runner.run([sys.executable, str(script), "migrate"], step="migrate", timeout=30,
                   cwd=tmp_path)
    message = err.value.message
    assert message.startswith("manage.py migrate exited with status 1: RuntimeError: ")
    assert message.endswith("backfill failed at postgres://***@db/x")
    assert "canary-pw" not in message
