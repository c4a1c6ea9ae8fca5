"""Pruning off the deploy path (issue 12): pruned releases and venvs are renamed to trash at
once and deleted later, by a process of their own, without holding anything of ours."""

from __future__ import annotations

import os
import time
from pathlib import Path

from watcher.parts import fs, releases, venvs
from watcher.parts.releases import Layout


def fill(path: Path, files: int = 300) -> None:
    for i in range(files):
        (path / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (path / f"d{i % 10}" / f"f{i}.py").write_text("x = 1\n" * 50)


def test_prune_renames_now_and_the_trash_is_deleted_in_the_background(tmp_path: Path) -> None:
    """With delete=False, pruning only renames the oldest release and the unused venv to
    `.trash-*` (never seen under their names again); `empty_trash(detached=True)` returns at
    once and a process of its own deletes them; the next prune leaves trash alone."""
    layout = Layout(tmp_path)
    layout.prepare()
    for name in ("20240101T000000Z-a", "20240102T000000Z-b", "20240103T000000Z-c"):
        fill(layout.release(name))
        venvs.link(layout.release(name), name[-1] * 4)
    for digest in ("aaaa", "bbbb", "cccc"):
        fill(layout.venvs / digest)
    removed = releases.prune(layout, 2, protect=[], delete=False)
    assert removed == ["20240101T000000Z-a"]
    assert venvs.prune(layout.venvs, ["bbbb", "cccc"], delete=False) == ["aaaa"]
    assert layout.names() == ["20240102T000000Z-b", "20240103T000000Z-c"]
    trash = fs.trash_in([layout.releases, layout.venvs])
    assert len(trash) == 2 and all(p.name.startswith(".trash-") for p in trash)
    assert venvs.prune(layout.venvs, ["bbbb", "cccc"], delete=False) == []  # trash left alone
    started = time.monotonic()
    assert fs.empty_trash([layout.releases, layout.venvs], detached=True) == 2
    assert time.monotonic() - started < 1.0
    deadline = time.monotonic() + 60
    while fs.trash_in([layout.releases, layout.venvs]):
        assert time.monotonic() < deadline, "the trash was not deleted"
        time.sleep(0.05)
    assert sorted(os.listdir(layout.venvs)) == ["bbbb", "cccc"]


def test_half_deleted_trash_is_finished_by_the_next_emptier(tmp_path: Path) -> None:
    """A deleter killed midway leaves a partly deleted `.trash-*` dir, never a release
    under its name; the next `empty_trash` deletes the rest."""
    layout = Layout(tmp_path)
    layout.prepare()
    fill(layout.release("20240101T000000Z-a"))
    fs.discard(layout.release("20240101T000000Z-a"), delete=False)
    [trash] = fs.trash_in([layout.releases])
    for p in sorted(trash.rglob("*.py"))[:100]:  # what a killed deleter got through
        p.unlink()
    assert layout.names() == []
    assert fs.empty_trash([layout.releases]) == 1
    assert fs.trash_in([layout.releases]) == []
