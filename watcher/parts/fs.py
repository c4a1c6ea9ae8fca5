"""File-system operations shared by the parts that own a tree on disk (releases, venvs):
removal that never leaves a half-deleted directory under its name, directory fsync, and
writes that never follow a link a commit planted.

Nothing a commit contains may make watcher read, write or delete anything outside the
release it builds (DESIGN §3): `remove` unlinks a link rather than what it points at,
`write_new` writes with O_NOFOLLOW, `symlink_above` finds a link on the way to a path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def remove(path: Path) -> None:
    """Remove a file, a link (not what it points at) or a directory tree."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def discard(path: Path) -> None:
    """Remove a release or venv dir so that no half-deleted one is ever seen under its name.

    Crash point: it is renamed to a dot-name first (atomic), then deleted; a kill during the
    deletion leaves `.trash-*`, which the next run's recovery removes.
    """
    if not path.exists():
        return
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    remove(trash)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
