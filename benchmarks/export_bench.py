"""The export step alone on 20,000 files of 4 KiB: a release linked from the live one against
a full `git archive` export, timed in one process, and what each costs on disk.

Run: `.venv/bin/python benchmarks/export_bench.py` (BENCH_FILES to change the count).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.site import git

from watcher.config import GitConfig
from watcher.parts.gitsource import GitSource

FILES = int(os.environ.get("BENCH_FILES", "20000"))


def commit(work: Path, message: str) -> str:
    git("add", "-A", cwd=work)
    git("commit", "-qm", message, cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def du_kb(*paths: Path) -> list[int]:
    """`du -sk` of each path in one call: hard links are counted once, in the first."""
    out = subprocess.run(["du", "-sk", *map(str, paths)], capture_output=True, text=True,
                         check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()]


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="exportbench"))
    try:
        remote, work = base / "remote.git", base / "work"
        git("init", "--bare", "-q", "-b", "main", str(remote), cwd=base)
        git("init", "-q", "-b", "main", str(work), cwd=base)
        git("remote", "add", "origin", str(remote), cwd=work)
        blob = "x" * 4064
        for i in range(FILES):
            d = work / "assets" / f"{i // 500:03d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:05d}.txt").write_text(f"{i}\n{blob}\n")
        (work / "app.py").write_text("v = 0\n")
        live_sha = commit(work, "a")
        src = GitSource(GitConfig(remote=str(remote)), base / "mirror")
        src.fetch()
        rel = base / "releases"
        rel.mkdir()
        live = rel / "live"
        src.export(live_sha, live)
        linked: list[float] = []
        full: list[float] = []
        for n in range(3):
            (work / "app.py").write_text(f"v = {n + 1}\n")
            sha = commit(work, f"change {n}")
            src.fetch()
            started = time.monotonic()
            assert src.export(sha, rel / f"linked{n}", base=(live, live_sha)) == "linked"
            linked.append(time.monotonic() - started)
            started = time.monotonic()
            src.export(sha, rel / f"full{n}")
            full.append(time.monotonic() - started)
            live, live_sha = rel / f"linked{n}", sha
        kb = du_kb(rel / "linked1", rel / "linked2")
        print(f"load average {os.getloadavg()[0]:.1f}; {FILES} files")
        print("export linked (s):", ", ".join(f"{t:.2f}" for t in linked))
        print("export full (s):  ", ", ".join(f"{t:.2f}" for t in full))
        print(f"disk: a linked release next to the previous one {kb[1]} KiB; "
              f"a full one {du_kb(rel / 'full2')[0]} KiB")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
