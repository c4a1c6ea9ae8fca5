"""Where a code-only `watcher --once` spends its time: pyinstrument (wall clock, so waits on
subprocesses and on the health check show) over one deploy in a fresh sandbox.

    .venv/bin/pip install pyinstrument   # not a dev dependency: only this script uses it
    .venv/bin/python benchmarks/profile_deploy.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sandbox import Sandbox


def main() -> int:
    sb = Sandbox()
    try:
        res = sb.site.watcher("--once", timeout=300)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        sb.commit_code(1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
        out = subprocess.run(
            [sys.executable, "-m", "pyinstrument", "-m", "watcher", "--once",
             "--config", str(sb.site.config)],
            capture_output=True, text=True, env=env, check=False, timeout=300)
        print(out.stdout)
        return out.returncode
    finally:
        sb.close()


if __name__ == "__main__":
    sys.exit(main())
