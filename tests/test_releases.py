"""Units of the on-disk helpers on a real file system: releases, venvs, state.json, the lock."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from watcher.errors import LockHeld, StepFailed
from watcher.parts import lock, releases, venvs
from watcher.parts.releases import Layout
from watcher.parts.state import HISTORY_MAX, ReleaseRecord, State, StateFile, write_atomic

SHA = "0123456789abcdef0123456789abcdef01234567"


def make_releases(layout: Layout, *names: str) -> None:
    for name in names:
        (layout.release(name) / "app").mkdir(parents=True)
        (layout.release(name) / "REVISION").write_text(name)


# -- releases.py --------------------------------------------------------------------------
def test_release_name_is_a_utc_stamp_and_the_short_sha() -> None:
    """Release names are `<UTC stamp>-<sha12>`, so they sort by time."""
    assert releases.release_name(SHA, now=0) == "19700101T000000Z-0123456789ab"
    assert releases.release_name(SHA, now=946684800 + 3661.9) == (
        "20000101T010101Z-0123456789ab")


def test_layout_names_and_live(tmp_path: Path) -> None:
    """`names()` lists release dirs oldest first (no temp dirs or files); `live()` is None
    before the first switch."""
    layout = Layout(tmp_path)
    layout.prepare()
    assert layout.live() is None and layout.names() == []
    make_releases(layout, "20240102T000000Z-b", "20240101T000000Z-a")
    (layout.releases / ".tmp-export").mkdir()
    (layout.releases / "stray-file").write_text("")
    assert layout.names() == ["20240101T000000Z-a", "20240102T000000Z-b"]
    assert stat.S_IMODE(layout.state_dir.stat().st_mode) == 0o700


def test_switch_points_current_at_the_release_relatively(tmp_path: Path) -> None:
    """`current` becomes a relative link to releases/<name>, replacing the old link and a
    stray temp link from a killed switch."""
    layout = Layout(tmp_path)
    make_releases(layout, "r1", "r2")
    releases.switch(layout, "r1")
    assert os.readlink(layout.current) == "releases/r1"
    os.symlink("releases/r1", tmp_path / f".current-{os.getpid()}")  # left by a crash
    releases.switch(layout, "r2")
    assert os.readlink(layout.current) == "releases/r2"
    assert layout.live() == "r2"
    assert (layout.current / "REVISION").read_text() == "r2"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".current")] == []


def test_switch_to_a_missing_release_leaves_current_alone(tmp_path: Path) -> None:
    """Switching to a release that does not exist fails and `current` stays where it was."""
    layout = Layout(tmp_path)
    make_releases(layout, "r1")
    releases.switch(layout, "r1")
    with pytest.raises(StepFailed, match="does not exist"):
        releases.switch(layout, "r9")
    assert layout.live() == "r1"


@pytest.mark.parametrize(("names", "keep", "protect", "left"), [
    (["a", "b", "c", "d", "e"], 3, ["e", "d"], ["c", "d", "e"]),
    (["a", "b", "c", "d", "e"], 3, ["e", "a"], ["a", "d", "e"]),  # an old previous is kept
    (["a", "b", "c"], 3, ["c"], ["a", "b", "c"]),
    (["a", "b", "c", "d"], 2, ["a", "b"], ["a", "b"]),  # protected ones even over `keep`
    (["a", "b", "c", "d"], 2, [None, "d"], ["c", "d"]),
])
def test_prune_keeps_the_newest_and_the_protected(
        tmp_path: Path, names: list[str], keep: int, protect: list[str | None],
        left: list[str]) -> None:
    """Pruning removes the oldest releases beyond `keep` and never a protected one."""
    layout = Layout(tmp_path)
    make_releases(layout, *names)
    removed = releases.prune(layout, keep, protect)
    assert layout.names() == left
    assert sorted(removed) == sorted(set(names) - set(left))


def test_hardlink_tree_shares_inodes(tmp_path: Path) -> None:
    """Carried static files are hard links of the old release's files, sub-dirs included."""
    src = tmp_path / "old" / "staticfiles"
    (src / "pages" / "img").mkdir(parents=True)
    (src / "pages" / "site.css").write_text("body{}")
    (src / "pages" / "img" / "logo.svg").write_text("<svg/>")
    dst = tmp_path / "new" / "staticfiles"
    assert releases.hardlink_tree(src, dst) == 2
    for rel in ("pages/site.css", "pages/img/logo.svg"):
        assert (dst / rel).stat().st_ino == (src / rel).stat().st_ino


def test_link_shared_seeds_creates_and_links(tmp_path: Path) -> None:
    """Shared paths become links into shared/: seeded from the first release that has them,
    created empty for a missing directory, and shared by every later release."""
    layout = Layout(tmp_path)
    layout.prepare()
    make_releases(layout, "r1", "r2")
    (layout.release("r1") / "data").mkdir()
    (layout.release("r1") / "data" / "db.sqlite3").write_text("rows")
    releases.link_shared(layout, layout.release("r1"), ["data", "media"])
    for rel in ("data", "media"):
        assert (layout.release("r1") / rel).is_symlink()
        assert (layout.shared / rel).is_dir()
    assert (layout.shared / "data" / "db.sqlite3").read_text() == "rows"
    (layout.release("r2") / "data").mkdir()
    (layout.release("r2") / "data" / "db.sqlite3").write_text("from git, ignored")
    releases.link_shared(layout, layout.release("r2"), ["data"])
    assert (layout.release("r2") / "data" / "db.sqlite3").read_text() == "rows"


def test_link_shared_refuses_a_missing_env_file(tmp_path: Path) -> None:
    """A shared file such as .env that exists nowhere fails the step: no release starts
    without its settings."""
    layout = Layout(tmp_path)
    layout.prepare()
    make_releases(layout, "r1")
    with pytest.raises(StepFailed, match=r"shared/\.env does not exist"):
        releases.link_shared(layout, layout.release("r1"), [".env"])
    (layout.shared / ".env").write_text("DJANGO_SECRET_KEY=x\n")
    releases.link_shared(layout, layout.release("r1"), [".env"])
    assert (layout.release("r1") / ".env").read_text() == "DJANGO_SECRET_KEY=x\n"


def test_remove_does_not_follow_links(tmp_path: Path) -> None:
    """Removing a symlinked path removes the link, never what it points at."""
    target = tmp_path / "shared"
    target.mkdir()
    (target / "keep").write_text("x")
    link = tmp_path / "link"
    os.symlink(target, link)
    releases.remove(link)
    releases.remove(tmp_path / "missing")
    assert not link.is_symlink() and (target / "keep").exists()


# -- venvs.py -----------------------------------------------------------------------------
def test_venv_hash_follows_requirements_content(tmp_path: Path) -> None:
    """The venv hash changes with the requirements' content and names, nothing else."""
    (tmp_path / "requirements.txt").write_text("Django==5.2\n")
    h1 = venvs.venv_hash(tmp_path, ["requirements.txt"], sys.executable)
    assert h1 == venvs.venv_hash(tmp_path, ["requirements.txt"], sys.executable)
    assert len(h1) == 16
    (tmp_path / "requirements.txt").write_text("Django==5.2\n# reviewed\n")
    h2 = venvs.venv_hash(tmp_path, ["requirements.txt"], sys.executable)
    assert h2 != h1
    (tmp_path / "dev.txt").write_text("")
    assert venvs.venv_hash(tmp_path, ["requirements.txt", "dev.txt"], sys.executable) != h2
    with pytest.raises(StepFailed, match=r"missing\.txt is missing"):
        venvs.venv_hash(tmp_path, ["missing.txt"], sys.executable)


def test_venv_hash_follows_nested_requirements(tmp_path: Path) -> None:
    """A change to a file included with -r or -c changes the venv hash; includes outside the
    release are not read."""
    (tmp_path / "requirements.txt").write_text("-r base.txt\n--constraint=pins.txt\n-r /etc/x\n")
    (tmp_path / "base.txt").write_text("Django\n")
    (tmp_path / "pins.txt").write_text("Django==5.2\n")
    h1 = venvs.venv_hash(tmp_path, ["requirements.txt"], sys.executable)
    (tmp_path / "base.txt").write_text("Django\ngunicorn\n")
    h2 = venvs.venv_hash(tmp_path, ["requirements.txt"], sys.executable)
    (tmp_path / "pins.txt").write_text("Django==5.2.1\n")
    h3 = venvs.venv_hash(tmp_path, ["requirements.txt"], sys.executable)
    assert len({h1, h2, h3}) == 3


def test_venv_link_and_prune(tmp_path: Path) -> None:
    """A release links `.venv` to ../../venvs/<hash>; pruning drops the venvs no release
    uses, half-built ones included."""
    layout = Layout(tmp_path)
    layout.prepare()
    make_releases(layout, "r1")
    for digest in ("aaaa", "bbbb", "cccc"):
        (layout.venvs / digest).mkdir()
    (layout.venvs / "aaaa" / venvs.COMPLETE).write_text("")
    venvs.link(layout.release("r1"), "aaaa")
    venvs.link(layout.release("r1"), "aaaa")  # again: replaces the link
    assert os.readlink(layout.release("r1") / ".venv") == "../../venvs/aaaa"
    assert venvs.linked_hash(layout.release("r1")) == "aaaa"
    assert venvs.is_complete(layout.venvs, "aaaa") and not venvs.is_complete(layout.venvs, "bbbb")
    assert venvs.prune(layout.venvs, ["aaaa", None]) == ["bbbb", "cccc"]
    assert sorted(os.listdir(layout.venvs)) == ["aaaa"]


def test_failed_venv_build_leaves_nothing_behind(tmp_path: Path) -> None:
    """A pip install that fails removes the half-built venv (and a leftover from a crash),
    so an incomplete venv is never used. (~3 s: a real `python -m venv`.)"""
    release = tmp_path / "release"
    release.mkdir()
    (release / "requirements.txt").write_text("watcher-test-no-such-package==1.0\n")
    root = tmp_path / "venvs"
    (root / "dddd").mkdir(parents=True)
    (root / "dddd" / "left-by-a-crash").write_text("")
    with pytest.raises(StepFailed) as info:
        venvs.build(root, "dddd", release, python=sys.executable,
                    requirements=["requirements.txt"],
                    pip_args=["--no-index", "--find-links", str(tmp_path)], timeout=120)
    assert info.value.step == "venv"
    assert "watcher-test-no-such-package" in info.value.output_tail
    assert not (root / "dddd").exists()


# -- state.py -----------------------------------------------------------------------------
def test_state_round_trip_is_private_and_atomic(tmp_path: Path) -> None:
    """state.json is written 0600 through a temp file and reads back the same state."""
    f = StateFile(tmp_path / ".watcher" / "state.json")
    assert f.load() == State()
    state = State(live="r2", releases={"r2": ReleaseRecord("r2", SHA, "aaaa")})
    state.mark_bad("f" * 40, "check", "ImportError")
    state.add_history({"outcome": "succeeded"})
    f.save(state)
    assert stat.S_IMODE(f.path.stat().st_mode) == 0o600
    assert [p.name for p in f.path.parent.iterdir()] == ["state.json"]
    assert f.load() == state
    assert json.loads(f.path.read_text())["version"] == 1


def test_stray_temp_file_is_ignored(tmp_path: Path) -> None:
    """A temp file left by a kill mid-write does not change what is loaded."""
    f = StateFile(tmp_path / "state.json")
    f.save(State(live="r1", releases={"r1": ReleaseRecord("r1", SHA, "a")}))
    (tmp_path / "state.json.tmp-99999").write_text("{half")
    assert f.load().live == "r1"
    f.save(State(live="r1", releases={"r1": ReleaseRecord("r1", SHA, "a")}))
    assert f.load().live == "r1"


def test_corrupt_state_is_kept_aside(tmp_path: Path) -> None:
    """A corrupt state.json is moved aside for a human, and loading starts empty."""
    f = StateFile(tmp_path / "state.json")
    f.path.write_text("{not json")
    assert f.load() == State()
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_text() == "{not json"


def test_previous_is_the_newest_good_older_release_on_disk() -> None:
    """The rollback target is the newest release older than the live one that is good and
    still on disk."""
    recs = {n: ReleaseRecord(n, SHA, "a") for n in ("r1", "r2", "r3", "r4", "r5")}
    recs["r3"].ok = False
    state = State(live="r4", releases=recs)
    assert state.previous({"r1", "r2", "r3", "r4", "r5"}) == recs["r2"]
    assert state.previous({"r1", "r3", "r4"}) == recs["r1"]
    assert state.previous({"r3", "r4"}) is None


def test_bad_commits_and_history_are_bounded() -> None:
    """Bad commits keep the newest 100 with short reasons; history keeps HISTORY_MAX entries."""
    state = State()
    for i in range(105):
        state.mark_bad(f"{i:040x}", "check", "x" * 1000)
    assert len(state.bad) == 100
    assert not state.is_bad(f"{0:040x}") and state.is_bad(f"{104:040x}")
    assert len(state.bad[f"{104:040x}"]["reason"]) == 500
    for i in range(HISTORY_MAX + 5):
        state.add_history({"n": i})
    assert len(state.history) == HISTORY_MAX and state.history[-1] == {"n": HISTORY_MAX + 4}


def test_forget_missing_keeps_the_live_record() -> None:
    """Records of releases gone from disk are dropped, never the live one's."""
    state = State(live="r2", releases={n: ReleaseRecord(n, SHA, "a") for n in ("r1", "r2")})
    state.forget_missing(set())
    assert list(state.releases) == ["r2"]


def test_write_atomic_replaces_content(tmp_path: Path) -> None:
    """An atomic write replaces the whole file and leaves no temp file."""
    path = tmp_path / "f"
    write_atomic(path, "one")
    write_atomic(path, "two", mode=0o640)
    assert path.read_text() == "two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["f"]


# -- lock.py ------------------------------------------------------------------------------
HOLD = """\
import sys, time
from pathlib import Path
from watcher.parts import lock
with lock.acquire(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    """While held, the lock names the holder's pid and a second acquire fails after `wait`."""
    path = tmp_path / ".watcher" / "lock"
    assert lock.holder(path) is None
    with lock.acquire(path):
        assert lock.holder(path) == os.getpid()
        started = time.monotonic()
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"), lock.acquire(path, wait=0.3):
            pass
        assert time.monotonic() - started >= 0.3
    assert lock.holder(path) is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_lock_of_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    """A watcher killed with SIGKILL while holding the lock does not block the next one."""
    path = tmp_path / "lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # structlog's default output may come first
            if line.strip() == "held":
                break
        assert lock.holder(path) == proc.pid
        with pytest.raises(LockHeld), lock.acquire(path):
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        with lock.acquire(path, wait=2):
            assert lock.holder(path) == os.getpid()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
