"""The next release's base, linked from the live one ahead of time (issue 12).

A linked export costs one hard link per unchanged file: on 20,000 files that is most of a
second on every deploy, whatever changed. So after a deploy, off its wall time, a detached
process (`python -m watcher.parts.release_spare`) links the new live release into a *spare*,
`releases/.spare-<live release>/`, exactly as a linked export of an unchanged commit would,
and records which paths it did not link (symlinks, REVISION, files that did not look as git
says), with the size of the live tree and why it would export in full (`Facts`), in
`releases/.spare-<live release>.json`, written last. The next deploy from that
live release takes the spare by renaming it to the new release's name, removes the paths
the diff names, and writes only those, and the ones the spare did not link, from the
archive: a cost in proportion to the change.

Who touches spares: only the holder of `releases/.spare.lock` (an flock), taken without
waiting on both sides. The builder holds it while it builds; a deploy that finds it held
exports as before, and never waits. Why a spare cannot change another release's files: it
is built by `link_unchanged` (the same checks, links only), contains no symlink, and the
deploy unlinks every path it rewrites before the archive writes it, so no linked inode is
ever opened for writing. A spare whose marker is missing (a builder killed mid-way) or
names another commit is never used, and the next builder deletes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from watcher.parts import release_tree
from watcher.parts.fs import write_new

PREFIX = ".spare"


def paths(releases: Path, live_name: str) -> tuple[Path, Path]:
    """The spare's directory and its marker."""
    return releases / f"{PREFIX}-{live_name}", releases / f"{PREFIX}-{live_name}.json"


@contextlib.contextmanager
def _held(releases: Path) -> Iterator[bool]:
    """`releases/.spare.lock`, taken without waiting: True when we hold it."""
    fd = os.open(releases / f"{PREFIX}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def build(mirror: Path, releases: Path, live_name: str, live_sha: str) -> bool:
    """Link the live release into a fresh spare (old spares deleted first); False when
    another builder holds the lock or the live release cannot be a base."""
    live = releases / live_name
    with _held(releases) as mine:
        if not mine:
            return False
        _clear(releases)
        if release_tree.unusable(live, live_sha):
            return False
        tree = release_tree.parse_tree(_git(mirror, "ls-tree", "-r", "-l", "-z", "--full-tree",
                                            live_sha))
        attrs = {path: _git(mirror, "cat-file", "blob", f"{live_sha}:{path}")
                 for path in tree if release_tree.is_attributes(path)}
        spare, marker = paths(releases, live_name)
        spare.mkdir()
        unlinked, made = release_tree.link_unchanged(tree, frozenset(), live, spare)
        release_tree.copy_dir_modes(live, spare, made)
        ready = marker.with_suffix(".tmp")
        write_new(ready, json.dumps({"sha": live_sha, "unlinked": unlinked, "files": len(tree),
                                     "full": release_tree.needs_full(tree, frozenset(), attrs)
                                     }).encode())
        os.replace(ready, marker)
        return True


def _git(mirror: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(mirror), *args], capture_output=True, check=True,
                          timeout=120).stdout.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Facts:
    """What the spare's builder found in the live commit's tree, so a deploy whose diff
    leaves every `.gitattributes` alone need not list the whole new tree (most of it is
    the live one): its size, and why it must export in full even unchanged ("" if not:
    submodules, export-subst)."""

    files: int
    full: str


def peek(releases: Path, live_name: str, live_sha: str) -> Facts | None:
    """The facts of the spare of `live_name` when one looks ready (`take` decides)."""
    _, marker = paths(releases, live_name)
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        if data.get("sha") != live_sha:
            return None
        return Facts(int(data["files"]), str(data["full"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def take(releases: Path, live_name: str, live_sha: str, dest: Path) -> set[str] | None:
    """Rename the spare of `live_name` (built from `live_sha`) to `dest`; the paths it did
    not link. None when there is none ready (or a builder holds the lock)."""
    spare, marker = paths(releases, live_name)
    with _held(releases) as mine:
        if not mine:
            return None
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
            if data.get("sha") != live_sha or not stat.S_ISDIR(spare.lstat().st_mode):
                return None
            unlinked = {str(p) for p in data["unlinked"]}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            marker.unlink()  # first: a spare half taken is never taken again
            os.rename(spare, dest)
        except OSError:
            return None
        return unlinked


def strip(dest: Path, changed: frozenset[str]) -> None:
    """Remove from a taken spare every path the diff names (and REVISION), and the
    directories that leaves empty: what stays is exactly the unchanged files, linked. The
    spare holds only real directories and linked files, so no path here crosses a link."""
    doomed = sorted(changed | {"REVISION"}, key=lambda p: p.count("/"), reverse=True)
    parents: set[str] = set()
    for path in doomed:
        target = dest / path
        try:
            if not stat.S_ISDIR(target.lstat().st_mode):
                target.unlink()
        except (FileNotFoundError, NotADirectoryError):  # never linked, or under a file
            pass
        parent = path.rpartition("/")[0]
        while parent:
            parents.add(parent)
            parent = parent.rpartition("/")[0]
    for parent in sorted(parents, key=lambda p: p.count("/"), reverse=True):
        with contextlib.suppress(OSError):  # not empty (or gone): it stays
            (dest / parent).rmdir()


def _clear(releases: Path) -> None:
    """Delete every spare and marker (any live release's): only the newest is ever used."""
    for p in releases.glob(f"{PREFIX}-*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def build_later(mirror: Path, releases: Path, live_name: str, live_sha: str,
                env: dict[str, str]) -> None:
    """Start `build` in a process of its own session that outlives ours (stdlib imports
    only: it costs a few tens of milliseconds of CPU), inheriting no descriptor."""
    subprocess.Popen(  # nothing waits for it, on purpose
        [sys.executable, "-m", "watcher.parts.release_spare", str(mirror), str(releases),
         live_name, live_sha], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True, env=env)


if __name__ == "__main__":  # the detached builder: mirror, releases dir, live name, live sha
    with contextlib.suppress(Exception):  # nobody reads its output: a failure costs a spare
        build(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4])
