"""Content-addressed virtualenvs: venvs/<hash>/, keyed by requirements content and interpreter.

A venv is built in place (venvs are not relocatable: scripts carry absolute shebangs) and
marked complete by a `.complete` file written last. Crash point: a kill during the build
leaves a dir without `.complete`; the next build of that hash removes it and starts again,
so a half-built venv is never used.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import structlog

from watcher.errors import StepFailed
from watcher.parts.fs import discard, remove
from watcher.parts.runner import clean_env, run

log = structlog.get_logger()
COMPLETE = ".complete"
LINK = ".venv"


@functools.lru_cache(maxsize=8)
def interpreter_id(python: str) -> str:
    """The build interpreter's exact version and platform; part of every venv's hash."""
    res = run(
        [python, "-c",
         "import sys,platform;print(sys.version.replace(chr(10),' '),platform.machine(),"
         "sys.implementation.name)"],
        step="venv", timeout=30, env=clean_env(),
    )
    return res.output.strip()


_NESTED = re.compile(r"^\s*(?:-r|-c|--requirement|--constraint)(?:\s+|=)(\S+)", re.MULTILINE)


def venv_hash(release: Path, requirements: Sequence[str], python: str) -> str:
    """Hash of the interpreter and every requirements file, following `-r`/`-c` includes
    inside the release, so a change to an included base.txt builds a new venv too."""
    h = hashlib.sha256()
    h.update(interpreter_id(python).encode())
    seen: set[Path] = set()
    todo = [release / rel for rel in requirements]
    while todo:
        path = todo.pop(0)
        rel = _inside(release, path)
        if path in seen or rel is None:
            continue
        seen.add(path)
        if not path.is_file():
            raise StepFailed("venv", f"requirements file {rel} is missing from the release")
        text = path.read_bytes()
        h.update(b"\0" + rel.encode() + b"\0" + text)
        for m in _NESTED.finditer(text.decode("utf-8", "replace")):
            todo.append(path.parent / m.group(1))
    return h.hexdigest()[:16]


def _inside(release: Path, path: Path) -> str | None:
    """The path relative to the release, or None for an include outside it (a URL, /etc)."""
    try:
        return str(path.resolve().relative_to(release.resolve()))
    except ValueError:
        return None


def is_complete(venvs: Path, digest: str) -> bool:
    return (venvs / digest / COMPLETE).is_file()


def build(
    venvs: Path,
    digest: str,
    release: Path,
    *,
    python: str,
    requirements: Sequence[str],
    pip_args: Sequence[str],
    timeout: float,
) -> None:
    """Build venvs/<digest> (the plan decided it is needed); a half-built one left by a crash
    is removed first, and one that fails is removed, so an incomplete venv is never used."""
    path = venvs / digest
    if path.exists():
        log.warning("venv.half_built_removed", venv=digest)
        remove(path)
    log.info("venv.build", venv=digest)
    try:
        run([python, "-m", "venv", str(path)], step="venv", timeout=timeout, env=clean_env())
        req_args: list[str] = []
        for rel in requirements:
            req_args += ["-r", str(release / rel)]
        pip = [str(path / "bin" / "python"), "-m", "pip", "install",
               "--disable-pip-version-check", "--no-input", *pip_args, *req_args]
        run(pip, step="venv", timeout=timeout, cwd=release,
            env=clean_env({"PIP_NO_INPUT": "1", "VIRTUAL_ENV": str(path)}))
    except BaseException:
        remove(path)
        raise
    (path / COMPLETE).write_text(interpreter_id(python) + "\n", encoding="utf-8")


def link(release: Path, digest: str) -> None:
    target = release / LINK
    if target.is_symlink() or target.exists():
        remove(target)
    os.symlink(os.path.join("..", "..", "venvs", digest), target)


def linked_hash(release: Path) -> str | None:
    try:
        return Path(os.readlink(release / LINK)).name
    except OSError:
        return None


def prune(venvs: Path, in_use: Iterable[str | None]) -> list[str]:
    """Remove every venv no release uses (and half-built ones)."""
    keep = {d for d in in_use if d}
    removed: list[str] = []
    if not venvs.is_dir():
        return removed
    for p in sorted(venvs.iterdir()):
        if p.name not in keep:
            discard(p)
            removed.append(p.name)
    if removed:
        log.info("prune.venvs", removed=removed)
    return removed
