"""File-system operations shared by the parts that own a tree on disk (releases, venvs):
removal that never leaves a half-deleted directory under its name, directory fsync, and
writes that never follow a link a commit planted.

Nothing a commit contains may make watcher read, write or delete anything outside the
release it builds (DESIGN §3): `remove` unlinks a link rather than what it points at,
`write_new` writes with O_NOFOLLOW, `symlink_above` finds a link on the way to a path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path


def remove(path: Path) -> None:
    """Remove a file, a link (not what it points at) or a directory tree."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


TRASH = ".trash-"


def discard(path: Path, *, delete: bool = True) -> None:
    """Remove a release or venv dir so that no half-deleted one is ever seen under its name.

    It is renamed to a dot-name first (atomic, instant), then deleted, now or (`delete`
    false) later by `empty_trash`, off the deploy's wall time. Crash point: a kill during
    the deletion leaves `.trash-*`, which the next `empty_trash` removes; nothing reads it.
    """
    if not path.exists():
        return
    trash = path.with_name(f"{TRASH}{path.name}-{os.getpid()}")
    os.replace(path, trash)
    if delete:
        remove(trash)


def trash_in(dirs: Iterable[Path]) -> list[Path]:
    """The `.trash-*` entries `discard` left in `dirs`."""
    found: list[Path] = []
    for d in dirs:
        with contextlib.suppress(OSError):
            found += sorted(p for p in d.iterdir() if p.name.startswith(TRASH))
    return found


def empty_trash(dirs: Iterable[Path], *, detached: bool = False) -> int:
    """Delete what `discard` renamed away; returns how many entries. `detached`: in a child
    process of its own session that outlives us, so `watcher --once` exits without waiting
    for the deletion (no descriptor of ours is inherited: not the lock, not our pipes).
    Trash names are unique and nothing reads them, so no lock is needed, and two deleters of
    the same entry do no harm."""
    trash = trash_in(dirs)
    if not trash:
        return 0
    if detached:
        subprocess.Popen(  # not runner.run: nothing waits for it, on purpose
            [sys.executable, "-c", _DELETE, *map(str, trash)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
            start_new_session=True)
    else:
        for path in trash:
            remove(path)
    return len(trash)


_DELETE = "import shutil,sys\nfor p in sys.argv[1:]: shutil.rmtree(p, ignore_errors=True)"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def point_link(link: Path, target: str) -> None:
    """Make `link` a symlink to `target` atomically: a temp link beside it (named by our
    pid) renamed over it, then the directory fsynced. Whoever resolves `link` sees the old
    target or the new one, never none. Crash point: a kill before the rename leaves `link`
    as it was and a stray `.<name>-<pid>` link, which the next call with that pid replaces."""
    tmp = link.with_name(f".{link.name}-{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to a new file at `path`, after removing whatever the name held (a file,
    a symlink, a directory), and with O_EXCL | O_NOFOLLOW: a link put there in between is
    an error, never a way out."""
    remove(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def symlink_above(base: Path, rel: str) -> str | None:
    """The first proper prefix of `rel` (under `base`) that is a symlink or not a directory,
    as a relative path; None when every existing parent is a real directory."""
    parts = Path(rel).parts[:-1]
    for i in range(1, len(parts) + 1):
        prefix = base.joinpath(*parts[:i])
        if prefix.is_symlink() or (prefix.exists() and not prefix.is_dir()):
            return str(Path(*parts[:i]))
    return None
