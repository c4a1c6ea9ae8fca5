"""Where a code-only `watcher --once` spends its time: pyinstrument (wall clock, so waits on
subprocesses and on the health check show) over one deploy in a fresh sandbox.

    .venv/bin/pip install pyinstrument   # not a dev dependency: only this script uses it
    .venv/bin/python benchmarks/profile_deploy.py [requirements]

With `requirements`, the profiled deploy changes the requirements (a venv build, a blue/green
swap, and the pruning of the oldest release and its venv) after three such deploys.
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
        if sys.argv[1:] == ["requirements"]:
            for n in range(3):
                sb.commit_requirements(n)
                sb.watcher_deploy()
            sb.commit_requirements(3)
        else:
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
