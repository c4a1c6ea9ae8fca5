"""Rows of issue 12: venv builds by uv and by pip (cold and warm cache), and a code-only
deploy with the disk each release costs, on the example app alone and on a repository of
20,000 generated files beside it.

Run alone: `.venv/bin/python benchmarks/speed_bench.py` (prints the numbers); `run.py` calls
`venv_builds()` and `big_repo()` for the table.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.site import EXAMPLE, Site, spare_ready, wheelhouse

from watcher.parts import venvs

FILES = int(os.environ.get("BENCH_FILES", "20000"))
FILE_BYTES = 4096  # 20,000 x 4 KiB = 80 MB, the repository


def venv_builds() -> dict[str, float]:
    """Seconds to build the example app's venv: uv with an empty cache, uv again (the
    cache warm: a second venv of the same packages, the first one live beside it, as in a
    deploy, so its bytecode is borrowed), pip twice (pip reads the same local wheel cache
    both times; it has no cache of its own for local wheels)."""
    base = Path(tempfile.mkdtemp(prefix="venvbench"))
    try:
        release = base / "release"
        release.mkdir()
        shutil.copy(EXAMPLE / "requirements.txt", release / "requirements.txt")
        out: dict[str, float] = {}
        for label, installer, digest, donor in (
                ("uv cold", "uv", "a", None), ("uv warm", "uv", "b", "a"),
                ("pip cold", "pip", "c", None), ("pip warm", "pip", "d", None)):
            started = time.monotonic()
            venvs.build(base / "venvs", digest, release, python=sys.executable,
                         requirements=["requirements.txt"],
                         pip_args=["--no-index", "--find-links", str(wheelhouse())],
                         timeout=600, installer=installer, cache=base / "uv-cache",
                         donor=donor)
            out[label] = time.monotonic() - started
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def release_cost(root: Path, new: str, old: str) -> int:
    """Bytes the release `new` adds on disk next to `old`: files whose inode `old` lacks
    (hard links to the old release's files cost nothing), like `du -s old new`."""
    def inodes(path: Path) -> set[int]:
        return {e.stat(follow_symlinks=False).st_ino for e in _walk(path)}

    seen = inodes(root / "releases" / old)
    total = 0
    for entry in _walk(root / "releases" / new):
        st = entry.stat(follow_symlinks=False)
        if st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_blocks * 512
    return total


def _walk(path: Path) -> list[os.DirEntry[str]]:
    out: list[os.DirEntry[str]] = []
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):  # .venv is a link: not followed
                    stack.append(Path(e.path))
                out.append(e)
    return out


def _code_only(site: Site, runs: int) -> tuple[list[float], list[float], dict[str, float]]:
    """`runs` code-only deploys: wall seconds, bytes per release, and the last one's steps.
    Each starts once the previous deploy's spare is linked (a detached child, well under a
    second on 20,000 files), as it is when pushes are more than a moment apart."""
    walls: list[float] = []
    costs: list[float] = []
    for i in range(runs):
        site.commit({"pages/bench.txt": f"code-only change {i} {time.time()}\n"}, f"Code {i}")
        before = site.live_release()
        if not spare_ready(site.root, before, 60):
            raise RuntimeError(f"no spare of {before} after 60 s")
        started = time.monotonic()
        res = site.watcher("--once", timeout=600)
        walls.append(time.monotonic() - started)
        if res.returncode != 0:
            raise RuntimeError(f"deploy failed: {res.stderr[-2000:]}")
        costs.append(release_cost(site.root, site.live_release(), before))
    steps = {s["name"]: s["duration_s"] for s in site.api.requests[-1].json["steps"]}
    return walls, costs, steps


def big_repo(runs: int = 3) -> dict[str, object]:
    """Code-only deploys of the example app, then of the same app with FILES more files."""
    site = Site(keep_releases=3)
    try:
        first = site.watcher("--once", timeout=600)
        if first.returncode != 0:
            raise RuntimeError(f"first deploy failed: {first.stderr[-2000:]}")
        small = _code_only(site, runs)
        blob = "x" * (FILE_BYTES - 32)
        site.commit({f"assets/{i // 500:03d}/f{i:05d}.txt": f"{i}\n{blob}\n"
                     for i in range(FILES)}, f"{FILES} files")
        res = site.watcher("--once", timeout=900)
        if res.returncode != 0:
            raise RuntimeError(f"deploy of the big tree failed: {res.stderr[-2000:]}")
        big = _code_only(site, runs)
        return {"small": small, "big": big, "files": FILES}
    finally:
        site.close()


def median(values: list[float]) -> float:
    return statistics.median(values)


if __name__ == "__main__":
    print("load average before:", os.getloadavg())
    for label, secs in venv_builds().items():
        print(f"venv {label}: {secs:.2f} s")
    result = big_repo()
    for key in ("small", "big"):
        walls, costs, steps = result[key]  # type: ignore[misc]
        print(f"{key}: code-only wall {median(walls):.2f} s (runs {walls}), per release "
              f"{median(costs) / 1e6:.2f} MB, steps {steps}")
    print("load average after:", os.getloadavg())
