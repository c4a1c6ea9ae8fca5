"""File-system operations shared by the parts that own a tree on disk (releases, venvs):
removal that never leaves a half-deleted directory under its name, and directory fsync."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def remove(path: Path) -> None:
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
