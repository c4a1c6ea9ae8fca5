"""Content-addressed virtualenvs: venvs/<hash>/, keyed by requirements content and interpreter.

A venv is built in place (venvs are not relocatable: scripts carry absolute shebangs) and
marked complete by a `.complete` file written last. Crash point: a kill during the build
leaves a dir without `.complete`; the next build of that hash removes it and starts again,
so a half-built venv is never used.

`build.installer = "uv"` (the default) builds with the uv binary that ships in the `uv`
wheel watcher depends on: `uv venv` then `uv pip install`, with uv's cache under
`.watcher/cache/uv` on the same file system as venvs/, so a package two venvs share is
hard-linked from the cache into both instead of unpacked twice. With a `donor` (the live
venv), the bytecode of the packages both venvs share is hard-linked from it too, and only the
rest is compiled (`venv_bytecode.py`). `"pip"`: `python -m venv` and the venv's own pip, as
before.
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
from watcher.parts import venv_bytecode
from watcher.parts.fs import TRASH, discard, remove
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
    installer: str = "uv",
    cache: Path | None = None,
    donor: str | None = None,
) -> None:
    """Build venvs/<digest> (the plan decided it is needed); a half-built one left by a crash
    is removed first, and one that fails is removed, so an incomplete venv is never used.

    `installer` is build.installer; `cache` is uv's cache dir (default
    `<app.root>/.watcher/cache/uv`, beside venvs/); pip ignores it. `donor` is the digest of
    the live release's venv: uv's build borrows its bytecode when it is complete and of the
    same interpreter."""
    path = venvs / digest
    if path.exists():
        log.warning("venv.half_built_removed", venv=digest)
        remove(path)
    log.info("venv.build", venv=digest, installer=installer)
    req_args: list[str] = []
    for rel in requirements:
        req_args += ["-r", str(release / rel)]
    try:
        if installer == "uv":
            _build_uv(path, release, python, pip_args, req_args, timeout,
                      cache or venvs.parent / ".watcher" / "cache" / "uv",
                      _usable_donor(venvs, donor, digest, python))
        else:
            run([python, "-m", "venv", str(path)], step="venv", timeout=timeout,
                env=clean_env())
            pip = [str(path / "bin" / "python"), "-m", "pip", "install",
                   "--disable-pip-version-check", "--no-input", *pip_args, *req_args]
            run(pip, step="venv", timeout=timeout, cwd=release,
                env=clean_env({"PIP_NO_INPUT": "1", "VIRTUAL_ENV": str(path)}))
    except BaseException:
        remove(path)
        raise
    # Written last: only a venv with this file is ever linked into a release.
    (path / COMPLETE).write_text(interpreter_id(python) + "\n", encoding="utf-8")


def _usable_donor(venvs: Path, donor: str | None, digest: str, python: str) -> Path | None:
    """The live venv to borrow bytecode from: complete, built by the same interpreter."""
    if not donor or donor == digest or os.sep in donor or donor.startswith("."):
        return None
    try:
        built_by = (venvs / donor / COMPLETE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return venvs / donor if built_by == interpreter_id(python) else None


def _build_uv(path: Path, release: Path, python: str, pip_args: Sequence[str],
              req_args: list[str], timeout: float, cache: Path, donor: Path | None) -> None:
    """`uv venv` + `uv pip install`. `--no-config`: a uv.toml or pyproject.toml committed in
    the release must not change where packages come from; `--no-python-downloads`: the venv
    uses build.python or fails, uv never fetches an interpreter. With a donor, bytecode is
    borrowed from it and only the rest compiled (`_compile_rest`)."""
    uv = uv_binary()
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    common = ["--no-config", "--no-python-downloads", "--cache-dir", str(cache)]
    env = clean_env({"VIRTUAL_ENV": str(path)})
    run([uv, "venv", "--quiet", *common, "--python", python, str(path)], step="venv",
        timeout=timeout, cwd=release, env=env)
    # --compile-bytecode: as pip does at install. Without it every Gunicorn worker and
    # manage.py run compiles the packages again whenever it cannot write __pycache__ (the
    # app's user cannot write venvs/, or PYTHONDONTWRITEBYTECODE is set): boots get slower.
    compile_now = [] if donor else ["--compile-bytecode"]
    run([uv, "pip", "install", *common, *compile_now,
         "--python", str(path / "bin" / "python"), *pip_args, *req_args], step="venv",
        timeout=timeout, cwd=release, env=env)
    if donor:
        _compile_rest(path, donor, timeout)


_PARALLEL_FROM = 200  # sources left to compile: below this one process beats a pool's start


def _compile_rest(path: Path, donor: Path, timeout: float) -> None:
    """Bytecode shared with the donor hard-linked, the sources left compiled by the venv's
    own interpreter (compileall, a list file inside the venv removed before `.complete`)."""
    linked, missing = venv_bytecode.borrow(donor, path)
    log.info("venv.bytecode", borrowed=linked, compiled=len(missing), donor=donor.name)
    if not missing:
        return
    listing = path / ".compile-list"
    listing.write_text("\n".join(missing) + "\n", encoding="utf-8", errors="surrogateescape")
    try:
        jobs = ["-j0"] if len(missing) >= _PARALLEL_FROM else []
        res = run([str(path / "bin" / "python"), "-m", "compileall", "-q", *jobs, "-i",
                   str(listing)], step="venv", timeout=timeout, cwd=path, env=clean_env(),
                  check=False)
        if not res.ok:  # like uv and pip: a source that does not compile fails at import
            log.warning("venv.bytecode_incomplete", output=res.output[-500:])
    finally:
        listing.unlink(missing_ok=True)


def uv_binary() -> str:
    """The uv executable from the `uv` wheel (`find_uv_bin()`), checked to run; a missing or
    broken one is a StepFailed that says what to do, never a traceback."""
    fix = ("reinstall watcher's dependencies (pip install --force-reinstall uv), or set "
           "build.installer = \"pip\"")
    try:
        from uv import find_uv_bin  # the binary ships in the uv wheel, nothing is downloaded
    except ImportError:
        raise StepFailed("venv", f"build.installer = \"uv\" but the uv package is not "
                         f"installed: {fix}") from None
    try:
        path = str(find_uv_bin())
    except (FileNotFoundError, OSError):
        raise StepFailed("venv", f"the uv package is installed but its binary is missing: "
                         f"{fix}") from None
    return path


def installer_version(installer: str, python: str) -> str:
    """What `watcher check` prints: "uv 0.5.1 (/path/to/uv)" or "pip 24.0 (python -m pip)".
    Raises StepFailed (step "check") when the installer cannot run."""
    if installer == "uv":
        try:
            uv = uv_binary()
            res = run([uv, "--version"], step="check", timeout=30, env=clean_env())
        except StepFailed as exc:
            raise StepFailed("check", f"uv does not run: {exc.message}") from None
        return f"{res.output.strip()} ({uv})"
    res = run([python, "-m", "pip", "--version"], step="check", timeout=30, env=clean_env(),
              check=False)
    if res.ok and res.output.startswith("pip "):
        return f"pip {res.output.split()[1]} (venvs get the pip that `python -m venv` seeds)"
    return "pip (seeded into each venv by `python -m venv`)"




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


def prune(venvs: Path, in_use: Iterable[str | None], *, delete: bool = True) -> list[str]:
    """Remove every venv no release uses (and half-built ones); `delete` false: only renamed
    to trash now (`fs.empty_trash` deletes them later)."""
    keep = {d for d in in_use if d}
    removed: list[str] = []
    if not venvs.is_dir():
        return removed
    for p in sorted(venvs.iterdir()):
        if p.name not in keep and not p.name.startswith(TRASH):
            discard(p, delete=delete)
            removed.append(p.name)
    if removed:
        log.info("prune.venvs", removed=removed)
    return removed
