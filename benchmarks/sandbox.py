"""The two sites the benchmarks compare, side by side in one sandbox on loopback.

watcher: `BlueGreenSite` from the test support (a bare remote seeded with examples/mysite,
supervisord running mysite_blue/mysite_green from `<root>/current`), deployed by
`python -m watcher --once`. baseline: a work clone of the same remote, one venv inside it, a
`baseline` program in the same supervisord, deployed by benchmarks/baseline.sh. Each has its
own real Nginx (the shipped examples/nginx/mysite.conf) on a free port.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.nginx import BlueGreenSite, Nginx
from support.site import git, wheelhouse
from support.supervisord import BIN_DIR, free_port

HERE = Path(__file__).resolve().parent


class Sandbox:
    def __init__(self) -> None:
        # The shipped setup: Nginx reaches the colour bluegreen.publish names; the colours'
        # startsecs is the shipped 5 (the baseline's program keeps supervisord's default, 1).
        self.bg = BlueGreenSite.create(health_timeout="30s", publish=True, startsecs=5)
        self.site = self.bg.site
        self.nginx: list[Nginx] = []
        self.base_dir = self.site.base / "baseline"
        self.base_port = free_port()

    # -- set-up ----------------------------------------------------------------------
    def start(self) -> None:
        res = self.site.watcher("--once", timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"first watcher deploy failed: {res.stderr[-3000:]}")
        git("clone", "-q", str(self.site.remote), str(self.base_dir), cwd=self.site.base)
        (self.base_dir / "data").mkdir()
        subprocess.run([sys.executable, "-m", "venv", str(self.base_dir / ".venv")],
                       check=True, timeout=120)
        d = self.base_dir
        self.site.sv.add_program("baseline", (
            f"command={d}/.venv/bin/gunicorn --chdir {d} -c {d}/gunicorn.conf.py\n"
            f'directory={d}\nenvironment=GUNICORN_BIND="127.0.0.1:{self.base_port}",'
            'GUNICORN_WORKERS="2",GUNICORN_PROC_NAME="baseline"\n'
            "autostart=false\nautorestart=true\nstartsecs=1\nstartretries=1\n"
            "stopsignal=TERM\nstopwaitsecs=25\nstopasgroup=true\nkillasgroup=true\n"))
        self.baseline_deploy()  # first install, as an operator would by hand

    def front(self, name: str, upstreams: list[int], hooks_port: int = 9090) -> Nginx:
        nginx = Nginx(self.site.base / f"nginx-{name}", upstreams, self.site.root, hooks_port)
        self.nginx.append(nginx.start())
        return nginx

    # -- deploys ---------------------------------------------------------------------
    def commit_code(self, n: int) -> str:
        return self.site.commit({"pages/bench.txt": f"code-only change {n}\n"}, f"Code {n}")

    def commit_requirements(self, n: int) -> str:
        """A real requirements change: pin one more dependency that Django already pulls in
        (so its wheel is in the cache); watcher builds a new venv, pip in the baseline finds
        it installed."""
        reqs = self.site.read("requirements.txt").rstrip("\n").split("\n")
        keep = [r for r in reqs if not r.startswith(("sqlparse", "asgiref", "#"))]
        extra = ["sqlparse==0.6.1", f"# requirements revision {n}"]
        return self.site.commit({"requirements.txt": "\n".join(keep + extra) + "\n"},
                                f"Requirements {n}")

    def watcher_deploy(self, env: dict[str, str] | None = None) -> float:
        started = time.monotonic()
        res = self.site.watcher("--once", timeout=300, env=env)
        took = time.monotonic() - started
        if res.returncode != 0:
            raise RuntimeError(f"watcher deploy failed: {res.stderr[-3000:]}")
        return took

    def baseline_deploy(self) -> float:
        argv = [str(HERE / "baseline.sh"), str(self.base_dir), str(self.site.sv.conf_path),
                "baseline", str(wheelhouse())]
        env = {"PATH": f"{BIN_DIR}:/usr/bin:/bin", "SUPERVISORCTL": str(BIN_DIR / "supervisorctl"),
               "HOME": str(self.site.base)}
        started = time.monotonic()
        res = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env,
                             check=False)
        took = time.monotonic() - started
        if res.returncode != 0 or "baseline: started" not in res.stdout:
            raise RuntimeError(f"baseline.sh failed: {res.stdout[-2000:]} {res.stderr[-2000:]}")
        return took

    # -- what serves -----------------------------------------------------------------
    def served(self, url: str) -> str:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
                return str(resp.read().decode().split()[-1])
        except OSError as exc:
            return type(exc).__name__

    def close(self) -> None:
        for nginx in self.nginx:
            nginx.stop()
        self.bg.close()
