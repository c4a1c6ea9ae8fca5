"""Bytecode a new venv borrows from the live one, so a requirements change compiles only what
changed (issue 12).

uv hard-links each package's files from its cache, so a package the live venv and the new one
share is the same inodes in both. Its `.pyc` files (timestamp-checked against the source's
mtime and size, which the shared inode keeps) are then valid in the new venv too: they are
hard-linked across instead of compiled again, and only the sources left without bytecode are
compiled. A `.pyc` holds the path it was compiled at, but the import system replaces it with
the importing path on load (`_imp._fix_co_filename`), so tracebacks name the new venv.

Why no venv can change another's bytecode: Python and compileall write a `.pyc` to a temporary
name and rename it over the old one, never into an existing file, so a recompile in one venv
replaces its own link and leaves the other's inode alone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PYCACHE = "__pycache__"


def site_packages(venv: Path) -> Path | None:
    """The venv's one `lib/pythonX.Y/site-packages` (None when there is not exactly one)."""
    found = sorted(venv.glob("lib/python*/site-packages"))
    return found[0] if len(found) == 1 else None


def borrow(donor: Path, venv: Path) -> tuple[int, list[str]]:
    """Hard-link into `venv` the bytecode of every source it shares (same inode) with `donor`.
    Returns how many `.pyc` files were linked and the sources (absolute paths) left with none,
    which the caller compiles."""
    new_site, old_site = site_packages(venv), site_packages(donor)
    if new_site is None or old_site is None or new_site.relative_to(venv) != \
            old_site.relative_to(donor):
        return 0, [str(p) for p in _sources(new_site)] if new_site else []
    linked = 0
    missing: list[str] = []
    for top, dirs, files in os.walk(new_site):
        dirs[:] = [d for d in dirs if d != PYCACHE]
        sources = [f for f in files if f.endswith(".py")]
        if not sources:
            continue
        rel = os.path.relpath(top, new_site)
        old_dir = os.path.normpath(os.path.join(old_site, rel))
        shared = _shared_sources(top, old_dir, sources)
        got = _link_bytecode(old_dir, top, shared) if shared else {}
        linked += sum(got.values())
        missing += [os.path.join(top, f) for f in sources if f[:-3] not in got]
    return linked, missing


def _sources(site: Path) -> list[Path]:
    return [p for p in site.rglob("*.py") if PYCACHE not in p.parts]


def _shared_sources(new_dir: str, old_dir: str, sources: list[str]) -> set[str]:
    """Module stems whose source is the very same file (inode and device) in both dirs."""
    stems: set[str] = set()
    for name in sources:
        try:
            new = os.lstat(os.path.join(new_dir, name))
            old = os.lstat(os.path.join(old_dir, name))
        except OSError:
            continue
        if stat.S_ISREG(new.st_mode) and (new.st_ino, new.st_dev) == (old.st_ino, old.st_dev):
            stems.add(name[:-3])
    return stems


def _stem_of(entry: str) -> str:
    """`mod.cpython-311.pyc` -> `mod` ("" for anything that is not bytecode)."""
    parts = entry.split(".")
    return parts[0] if len(parts) >= 3 and parts[-1] == "pyc" else ""


def _link_bytecode(old_dir: str, new_dir: str, stems: set[str]) -> dict[str, int]:
    """Link `<stem>.<tag>[.opt-N].pyc` of each shared stem from old_dir's `__pycache__`;
    {stem: files linked} for the stems that got their plain (not optimized) bytecode."""
    old_cache = os.path.join(old_dir, PYCACHE)
    try:
        entries = os.listdir(old_cache)
    except OSError:
        return {}
    wanted = [e for e in entries if _stem_of(e) in stems]
    if not wanted:
        return {}
    new_cache = os.path.join(new_dir, PYCACHE)
    try:
        os.mkdir(new_cache)
    except FileExistsError:  # a wheel's own __pycache__: used only if a real directory
        if not stat.S_ISDIR(os.lstat(new_cache).st_mode):
            return {}
    except OSError:
        return {}
    got: dict[str, int] = {}
    plain: set[str] = set()
    for entry in wanted:
        src, stem = os.path.join(old_cache, entry), _stem_of(entry)
        try:
            if not stat.S_ISREG(os.lstat(src).st_mode):
                continue
            os.link(src, os.path.join(new_cache, entry), follow_symlinks=False)
        except OSError:  # EMLINK, already there, a vanished file: compiled instead
            continue
        got[stem] = got.get(stem, 0) + 1
        if entry.count(".") == 2:  # <stem>.<tag>.pyc, not an optimized .opt-N
            plain.add(stem)
    return {stem: n for stem, n in got.items() if stem in plain}
