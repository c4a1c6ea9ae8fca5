"""Disk stays bounded: 200 deploys in a row leave `keep_releases` releases, no venv that no
release uses, an empty spool while the logging API is up, and bounded state.

The 200 deploys are real (real git remote and mirror, real venvs, Django checks, Gunicorn
HUPs over supervisord, health checks and reports) but driven in-process through
`Deployer(cfg).check_once()`, which saves the interpreter start of `python -m watcher` on
every deploy. The first deploy and a last check run `watcher --once` as a subprocess.
Twice the requirements change, so venvs are built and must be pruned once unused.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from support.daemon import fd_count, proc_children, proc_state
from support.faults import complete_release
from support.site import TOKEN, Site, leftovers, spare_ready

from watcher import log
from watcher.config_load import load
from watcher.engine.deploy import Deployer
from watcher.parts import fs

pytestmark = pytest.mark.slow

DEPLOYS = 200
KEEP = 3
# Deploy number -> the requirements.txt suffix from then on (a new venv each time).
REQUIREMENT_CHANGES = {60: "# variant b\n", 61: "", 140: "# variant c\n"}


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(keep_releases=KEEP, workers=1)  # one Gunicorn worker: half the boots per deploy
    try:
        yield s
    finally:
        s.close()


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            p = Path(dirpath) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def _live_children() -> list[int]:
    me = os.getpid()
    return [p for p in proc_children(me) if proc_state(p) not in ("", "Z")]


@pytest.fixture
def quiet_log() -> Iterator[io.StringIO]:
    """watcher's log, warnings and up, into a buffer (not 5,000 lines of info)."""
    buffer = io.StringIO()
    log.configure("warning", stream=buffer, json=True)
    yield buffer
    structlog.reset_defaults()


@pytest.mark.timeout(1800)  # about 1.5 s a deploy on 2 busy cores: 5 to 8 minutes
def test_two_hundred_deploys_stay_bounded(site: Site, quiet_log: io.StringIO) -> None:
    """After each of 200 deploys in a row: at most keep_releases releases (the newest ones),
    only venvs some release uses, an empty spool, no stray temp files, and no file
    descriptors or child processes piling up in the deploying process."""
    first = site.watcher("--once")
    assert first.returncode == 0, first.stderr[-3000:]
    cfg = load(site.config)
    root = site.root
    requirements = site.read("requirements.txt")
    deployed: list[str] = [site.live_release()]
    fds_before, kids_before = fd_count(os.getpid()), len(_live_children())
    sizes: dict[int, int] = {}
    seconds: list[float] = []
    venv_builds = 0

    for n in range(1, DEPLOYS + 1):
        files = {"pages/marker.py": f"DEPLOY = {n}\n"}
        if n in REQUIREMENT_CHANGES:
            files["requirements.txt"] = requirements + REQUIREMENT_CHANGES[n]
        sha = site.commit(files, f"Deploy {n}")
        started = time.monotonic()
        outcome = Deployer(cfg).check_once()
        seconds.append(time.monotonic() - started)
        # What `watcher --once` and the daemon start after each deploy, in the background
        # (Deployer.empty_trash), done here in the foreground so the sizes below are settled.
        fs.empty_trash([root / "releases", root / "venvs"])
        assert (outcome.outcome, outcome.exit_code, outcome.sha) == ("succeeded", 0, sha), (
            f"deploy {n}: {outcome}")
        assert outcome.release is not None
        assert spare_ready(root, outcome.release, 30), f"deploy {n}: no spare built"
        deployed.append(outcome.release)
        venv_builds += n in REQUIREMENT_CHANGES and REQUIREMENT_CHANGES[n] != ""

        releases = site.releases()
        assert len(releases) <= KEEP, f"deploy {n}: {len(releases)} releases"
        assert set(deployed[-KEEP:]) == set(releases), f"deploy {n}: not the newest {KEEP}"
        used = {os.readlink(root / "releases" / r / ".venv").split("/")[-1] for r in releases}
        # A pruned venv is renamed to .trash-* at once and deleted by a detached process
        # after the deploy (off its wall time): the names in use are what must match.
        venvs = {p.name for p in (root / "venvs").iterdir() if not p.name.startswith(".")}
        assert venvs == used, f"deploy {n}: venvs {venvs} but releases use {used}"
        assert list((root / ".watcher" / "spool").glob("*.json")) == [], f"deploy {n}: spooled"
        assert complete_release(root)
        if n % 20 == 0 or n == 10:
            sizes[n] = _du(root / "releases") + _du(root / "venvs")
            print(f"deploy {n}: {sum(seconds):.0f}s so far", file=sys.stderr)

    # Nothing piles up beside the releases.
    state = site.state()
    assert state["live"] == deployed[-1] == site.live_release()
    assert set(state["releases"]) == set(site.releases())
    assert len(state["history"]) <= 200 and state["bad"] == {}
    state_dir = {p.name for p in (root / ".watcher").iterdir()}
    assert state_dir <= {"state.json", "lock", "spool", "children", "cache",
                         "gate.json", "gate.sock"}, state_dir
    assert not list((root / ".watcher" / "children").iterdir()), "a finished child's record"
    deadline = time.monotonic() + 60  # the background deletions of pruned trees finish
    while time.monotonic() < deadline and _trash(root):
        time.sleep(0.2)
    assert not _trash(root), _trash(root)
    assert not list(root.glob(".current-*"))
    assert (root / ".watcher" / "state.json").stat().st_size < 2_000_000
    # The bytes on disk for releases and venvs do not grow with the number of deploys.
    assert sizes[DEPLOYS] <= sizes[10] * 1.2, sizes
    # The reports all arrived, and no secret went with them.
    delivered = site.api.delivered_ids()
    assert len(delivered) == DEPLOYS + 1 and len(set(delivered)) == DEPLOYS + 1
    assert not any(TOKEN.encode() in r.body for r in site.api.requests)
    # The deploying process leaks neither descriptors nor child processes (git cat-file).
    assert fd_count(os.getpid()) <= fds_before + 5, (fds_before, fd_count(os.getpid()))
    # ... but the one warm gate the last deploy left waiting for the next (parts/warm_gate).
    gate = json.loads((root / ".watcher" / "gate.json").read_text())["pid"]
    assert len([p for p in _live_children() if p != gate]) <= kids_before, _live_children()
    assert '"level": "error"' not in quiet_log.getvalue(), quiet_log.getvalue()[-2000:]
    assert venv_builds == 2

    again = site.watcher("--once")
    assert again.returncode == 0 and again.stdout.startswith("unchanged"), again.stdout
    assert site.served_revision() == site.head()
    print(f"{DEPLOYS} in-process deploys: total {sum(seconds):.0f}s, median "
          f"{sorted(seconds)[DEPLOYS // 2]:.2f}s, max {max(seconds):.1f}s; "
          f"releases+venvs bytes {sizes}; mirror {_du(root / 'repo')} bytes")


def _trash(root: Path) -> list[str]:
    """Pruned releases and venvs not deleted yet, a spare being built."""
    return leftovers(root)
