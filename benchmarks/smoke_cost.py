"""What the smoke requests (step 9a) add to a code-only deploy: the gate's Django boot with
and without them, alternated, on a migrated copy of examples/mysite whose venv is this
interpreter's (no migration pending, so the requests run in the gate's own boot).

    .venv/bin/python benchmarks/smoke_cost.py [runs] [smoke path ...]   # e.g. 10 /
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from watcher.config import DjangoConfig
from watcher.parts.django_findings import SmokeSpec
from watcher.parts.django_steps import Django

ROOT = Path(__file__).resolve().parents[1]


def release(base: Path) -> Django:
    rel = base / "rel"
    shutil.copytree(ROOT / "examples" / "mysite", rel, ignore=shutil.ignore_patterns(
        "data", "staticfiles", "__pycache__", ".venv", "*.pyc"))
    (rel / ".venv").symlink_to(sys.prefix)
    (rel / "data").mkdir()
    (rel / "REVISION").write_text("0" * 40 + "\n")
    dj = Django(DjangoConfig(), rel)
    dj.migrate()
    return dj


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    paths = tuple(sys.argv[2:])  # none: the health path only, as with the default config
    spec = SmokeSpec("http://127.0.0.1:8000/healthz", paths, "0" * 40)
    base = Path(tempfile.mkdtemp(prefix="wsmokecost"))
    try:
        dj = release(base)
        dj.inspect(gate=True)  # warm the page cache and .pyc files
        plain, smoked, inside, cpu = [], [], [], []
        for _ in range(runs):
            for target, kwargs in ((plain, {}), (smoked, {"smoke": spec})):
                started = time.monotonic()
                found = dj.inspect(gate=True, **kwargs)  # type: ignore[arg-type]
                target.append(time.monotonic() - started)
                if found.smoke is not None:
                    found.smoke.verdict()
                    inside.append(found.smoke.ms / 1000)
                    cpu.append(found.smoke.cpu_ms / 1000)
        mp, ms = statistics.median(plain), statistics.median(smoked)
        print(f"gate boot, {runs} runs each, smoke paths: /healthz {' '.join(paths)}")
        print(f"  without smoke requests: median {mp:.3f} s (min {min(plain):.3f})")
        print(f"  with smoke requests:    median {ms:.3f} s (min {min(smoked):.3f})")
        print(f"  added: {ms - mp:+.3f} s median, {min(smoked) - min(plain):+.3f} s min")
        print(f"  measured inside the boot (import of django.test and the requests): median "
              f"{statistics.median(inside):.3f} s, min {min(inside):.3f} s; CPU time median "
              f"{statistics.median(cpu):.3f} s, min {min(cpu):.3f} s")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
