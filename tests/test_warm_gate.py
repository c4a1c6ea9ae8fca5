"""The warm gate (parts/warm_gate.py): a real interpreter of the release's venv (the dev venv
stands in for it) that imported Django and waits, handed the gate's real Django boot in a
real release of the example site. It must answer exactly as a cold boot does, fail as one
does, die on a timeout as a child does, never be used for another venv or environment, and
go away by itself."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support.site import EXAMPLE

from watcher.config import DjangoConfig
from watcher.errors import StepFailed
from watcher.parts import procs, warm_gate
from watcher.parts.django_steps import Django


@dataclass
class Release:
    base: Path
    path: Path
    gates: Path
    marker: Path

    def django(self, timeout: float = 60, warm: float = 60) -> Django:
        return Django(DjangoConfig(timeout=timeout, warm_gate=warm), self.path, self.gates)

    def start_gate(self, idle_s: float = 60, key: str | None = None) -> int:
        """A gate for this release's venv, waiting; its pid."""
        dj = self.django()
        env = dj.env()
        venv = Path(os.path.realpath(self.path / ".venv"))
        warm_gate.start_later(self.gates, venv / "bin" / "python", self.marker, env,
                              key or warm_gate.key(self.path / ".venv", env, self.path), idle_s)
        record = warm_gate._read(self.gates)
        assert record is not None
        until(lambda: (self.gates / warm_gate.SOCKET).exists(), 30)
        return record.pid


def until(cond: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def running(pid: int) -> bool:
    return procs.start_time(pid, running=True) is not None


@pytest.fixture()
def release() -> Iterator[Release]:
    """A migrated release of the example site; its state directory; a venv marker."""
    base = Path(tempfile.mkdtemp(prefix="wgate", dir="/tmp"))
    path = base / "rel"
    shutil.copytree(EXAMPLE, path, ignore=shutil.ignore_patterns(
        "data", "staticfiles", "__pycache__", ".venv", "*.pyc"))
    (path / ".venv").symlink_to(sys.prefix)
    (path / "data").mkdir()
    gates = base / "state"
    gates.mkdir(mode=0o700)
    marker = base / ".complete"
    marker.write_text("ok\n")
    rel = Release(base, path, gates, marker)
    rel.django().migrate()
    try:
        yield rel
    finally:
        warm_gate.stop(gates)
        shutil.rmtree(base, ignore_errors=True)


def test_a_warm_gate_answers_as_a_cold_boot_does(release: Release) -> None:
    """The gate's boot handed to a waiting gate gives the same inspection as a cold one,
    runs in the gate's process (not a new one), and the gate is used once: its socket goes."""
    dj = release.django()
    cold = dj.inspect(gate=True)
    pid = release.start_gate()
    key = warm_gate._read(release.gates).key  # type: ignore[union-attr]
    # a digest of an environment that holds secrets: not on the command line `ps` shows
    assert key.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    with capture_logs() as events:
        warm = dj.inspect(gate=True)
    assert warm == cold
    assert [e["pid"] for e in events if e["event"] == "gate.warm"] == [pid]
    assert not (release.gates / warm_gate.SOCKET).exists()
    assert until(lambda: not running(pid), 5)


def test_a_broken_release_fails_the_same_through_the_gate(release: Release) -> None:
    """A settings module that raises fails the gate's boot with the same exit status and
    error through a warm gate as cold: the gate preloaded only Django, never the app."""
    settings = release.path / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + '\nraise RuntimeError("settings-broken-7f3a")\n')
    dj = release.django()
    with pytest.raises(StepFailed) as cold:
        dj.inspect(gate=True)
    release.start_gate()
    with capture_logs() as events, pytest.raises(StepFailed) as warm:
        dj.inspect(gate=True)
    assert any(e["event"] == "gate.warm" for e in events)
    assert "settings-broken-7f3a" in warm.value.output_tail
    assert warm.value.message == cold.value.message
    assert "status 1" in warm.value.message


def test_exit_code_and_exit_handlers_are_those_of_a_cold_run(release: Release) -> None:
    """Through a gate, a command's exit code is its own and what the app's atexit handlers
    print is part of its output, as when `python manage.py` ends by itself."""
    settings = release.path / "mysite" / "settings.py"
    settings.write_text(settings.read_text()
                        + '\nimport atexit\natexit.register(print, "bye-from-atexit")\n')
    dj = release.django()
    script = "import sys; print('said'); sys.exit(3)"
    cold = dj.manage("shell", "-c", script, step="check", check=False)
    release.start_gate()
    with capture_logs() as events:
        warm = dj.manage("shell", "-c", script, step="check", check=False, warm=True)
    assert any(e["event"] == "gate.warm" for e in events)
    assert (warm.returncode, warm.output) == (cold.returncode, cold.output)
    assert warm.returncode == 3 and warm.output.endswith("said\nbye-from-atexit")


def test_a_gate_that_hangs_is_killed_at_the_timeout(release: Release) -> None:
    """A boot that hangs in the gate ends at django.timeout as a child's would: the step
    fails as timed out and the gate's process group is gone."""
    settings = release.path / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + "\nimport time\ntime.sleep(120)\n")
    pid = release.start_gate()
    started = time.monotonic()
    with pytest.raises(StepFailed) as err:
        release.django(timeout=3).inspect(gate=True)
    assert err.value.timed_out and time.monotonic() - started < 10
    assert until(lambda: not running(pid), 5)


def test_a_gate_of_another_venv_or_environment_is_never_used(release: Release) -> None:
    """A waiting gate started for another key (another venv, another environment) is stopped
    and the boot runs cold, with the same result."""
    dj = release.django()
    pid = release.start_gate(key="another-venv-or-environment")
    with capture_logs() as events:
        found = dj.inspect(gate=True)
    assert found.pending == ()
    assert not any(e["event"] == "gate.warm" for e in events)
    assert any(e["event"] == "gate.cold" for e in events)
    assert until(lambda: not running(pid), 5)


def test_the_environment_is_part_of_the_key(release: Release) -> None:
    """The key changes with the venv's real path and with any variable of the environment,
    not with the release's own path inside it (every release has another)."""
    env = {"PATH": f"{release.path}/.venv/bin:/usr/bin", "LANG": "C.UTF-8"}
    key = warm_gate.key(release.path / ".venv", env, release.path)
    other = release.base / "rel2"
    other.mkdir()
    (other / ".venv").symlink_to(sys.prefix)
    assert warm_gate.key(other / ".venv", {**env, "PATH": f"{other}/.venv/bin:/usr/bin"},
                         other) == key
    assert warm_gate.key(release.path / ".venv", {**env, "LANG": "de_DE.UTF-8"},
                         release.path) != key
    (other / ".venv").unlink()
    (other / ".venv").symlink_to(release.base)
    assert warm_gate.key(other / ".venv", env, other) != key


@pytest.mark.parametrize("goes", ["idle", "marker", "socket"])
def test_a_gate_nobody_uses_goes_away(release: Release, goes: str) -> None:
    """A waiting gate exits by itself, removing its socket: after its idle time, when its
    venv's marker goes (the venv was pruned), or when its socket is removed."""
    pid = release.start_gate(idle_s=1 if goes == "idle" else 60)
    if goes == "marker":
        release.marker.unlink()
    elif goes == "socket":
        (release.gates / warm_gate.SOCKET).unlink()
    assert until(lambda: not running(pid), 10)
    assert not (release.gates / warm_gate.SOCKET).exists()


def test_a_second_start_leaves_a_waiting_gate_alone(release: Release) -> None:
    """Starting a gate of the same key while one waits keeps the waiting one; with
    `django.warm_gate = 0` nothing is started."""
    pid = release.start_gate()
    assert release.start_gate() == pid
    warm_gate.stop(release.gates)
    assert until(lambda: not running(pid), 5)
    release.django(warm=0).warm_later(Path(sys.prefix), release.marker)
    record = warm_gate._read(release.gates)
    assert record is not None and record.pid == pid  # the old record: nothing new started
    assert not (release.gates / warm_gate.SOCKET).exists()
