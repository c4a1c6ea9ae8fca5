"""The release tree under app.root: release dirs, shared links, the `current` switch, pruning."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import structlog

from watcher.errors import StepFailed
from watcher.parts.fs import discard, point_link, remove, symlink_above

__all__ = ["Layout", "discard", "hardlink_tree", "link_shared", "prune", "release_name",
           "remove", "switch"]

log = structlog.get_logger()


class Layout:
    """Paths of DESIGN §3 for one app root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "repo"
        self.releases = root / "releases"
        self.venvs = root / "venvs"
        self.shared = root / "shared"
        self.current = root / "current"
        self.state_dir = root / ".watcher"

    def prepare(self) -> None:
        """Create the tree. `repo/` (the private history) and `.watcher/` are the deploy
        user's alone, 0700, tightened on every start; releases/, venvs/ and shared/ are made
        0755 when created, so the app's user and Nginx can read what they serve."""
        for d in (self.releases, self.venvs, self.shared):
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                os.chmod(d, 0o755)  # noqa: S103 - Nginx and the app user read releases
        for d in (self.repo, self.state_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)

    def release(self, name: str) -> Path:
        return self.releases / name

    def live(self) -> str | None:
        """The release `current` points at, or None before the first deploy."""
        try:
            target = os.readlink(self.current)
        except (FileNotFoundError, OSError):
            return None
        return Path(target).name

    def names(self) -> list[str]:
        """Release names, oldest first (names start with a UTC stamp)."""
        if not self.releases.is_dir():
            return []
        return sorted(p.name for p in self.releases.iterdir()
                      if p.is_dir() and not p.name.startswith("."))


_last_stamp = 0
_stamp_lock = threading.Lock()


def release_name(sha: str, now: float | None = None) -> str:
    """`<UTC stamp>-<sha12>`. Without `now`, a stamp never repeats within this process: two
    deploys in one second would sort by sha, and pruning and rollback go by name order."""
    global _last_stamp
    if now is None:
        with _stamp_lock:
            _last_stamp = now = max(int(time.time()), _last_stamp + 1)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{stamp}-{sha[:12]}"


def link_shared(layout: Layout, release: Path, paths: Iterable[str]) -> None:
    """Replace each shared path in the release by a symlink into shared/.

    A path missing from shared/ is seeded from the release when the release has it; a
    missing name without a suffix (media, data) becomes an empty directory; a missing file
    (.env) is an error, so a release never starts without its settings.

    A symlink from the commit is never followed: one at the shared path itself is replaced
    by the link into shared/ (and seeds nothing); one on the way to it (`var` for
    `var/media`) fails the step, since following it could reach shared/ or any directory.
    """
    for rel in paths:
        target = layout.shared / rel
        inside = release / rel
        above = symlink_above(release, rel)
        if above is not None:
            what = "a symlink" if (release / above).is_symlink() else "not a directory"
            raise StepFailed("shared", f"build.shared path {rel!r}: {above!r} in the commit is "
                                       f"{what}; watcher does not follow it")
        planted = inside.is_symlink()
        if not target.exists():
            if inside.exists() and not planted:
                target.parent.mkdir(parents=True, exist_ok=True)
                if inside.is_dir():
                    shutil.copytree(inside, target, symlinks=True)
                else:
                    shutil.copy2(inside, target, follow_symlinks=False)
                log.info("shared.seeded", path=rel)
            elif not Path(rel).suffix and not rel.startswith("."):
                target.mkdir(parents=True)
                log.info("shared.created", path=rel)
            else:
                raise StepFailed("shared", f"shared/{rel} does not exist; create it first")
        if planted:
            log.warning("shared.commit_symlink_replaced", path=rel)
        remove(inside)
        inside.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, inside)


def switch(layout: Layout, name: str) -> None:
    """Point `current` at releases/<name> atomically: a temp symlink renamed over it.

    Crash point: a kill before the rename leaves `current` as it was and a stray
    `.current-*` link, which the next switch replaces; after it, `current` is the new
    release and state.json still names the old one until the deploy records it.
    """
    if not layout.release(name).is_dir():
        raise StepFailed("switch", f"release {name} does not exist")
    point_link(layout.current, os.path.join("releases", name))


def prune(layout: Layout, keep: int, protect: Iterable[str | None], *,
          delete: bool = True) -> list[str]:
    """Remove the oldest releases beyond `keep`, never a protected one. Returns the removed.
    `delete` false: only renamed to trash now (`fs.empty_trash` deletes them later)."""
    keep_set = {p for p in protect if p}
    names = layout.names()
    removed: list[str] = []
    excess = len(names) - keep
    for name in names:
        if excess <= 0:
            break
        if name in keep_set:
            continue
        discard(layout.release(name), delete=delete)
        removed.append(name)
        excess -= 1
    if removed:
        log.info("prune.releases", removed=removed)
    return removed


def _replace_with(src: Path, dst: Path) -> None:
    """`dst` (taken, or on another file system) becomes a new entry with `src`'s content,
    put in place by rename: a file already there may be a hard link shared with the live
    release (docs/releases.md), so it is replaced, never written into."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def hardlink_tree(src: Path, dst: Path) -> int:
    """Copy a tree by hard links (collected static files); returns files linked."""
    count = 0
    for dirpath, _dirs, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            s, d = Path(dirpath) / f, dst / rel / f
            try:
                os.link(s, d)
            except OSError:
                _replace_with(s, d)
            count += 1
    return count
