"""How long a broken release is served with 5xx under load (issue 17), in one sandbox.

A blue/green pair of the example site (tests/support BlueGreenSite) behind a real Nginx
(the shipped examples/nginx/mysite.conf: its upstream is the socket `bluegreen.publish`
names, which watcher points at a colour only after its health check), steady GETs of
/healthz through Nginx (tests/support/load.py, ~RATE req/s), and `watcher --once` deploying:

- `gunicorn`: a /healthz that fails only when served by Gunicorn (the smoke requests, which
  go through Django's test client, cannot see it): caught after the switch, by the health
  check;
- `always`: a /healthz that raises for every request: caught before the switch by the
  smoke requests (with them), or by the health check (without);

with a HUP of the live colour (`supervisor.reload = "hup"`), the default reload of a
code-only change (`"auto"`: rolling, TTIN then TTOU), and a blue/green swap (`"bluegreen"`).
Between two cases a good commit is deployed again. Prints one line per case: outcome, 5xx
answers seen through Nginx, and the window from the first 5xx to the last.

    .venv/bin/python benchmarks/exposure.py            # the rows for BENCHMARKS.md
    PYTHONPATH=/path/to/other/tree .venv/bin/python benchmarks/exposure.py   # that watcher
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.load import Load
from support.nginx import BlueGreenSite, Nginx

RATE = 150
HEALTH_TIMEOUT = "30s"  # the default of health.timeout
HEALTHZ_OK = '''def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for watcher and load balancers; never touches the database."""
'''
BROKEN = {
    "gunicorn": HEALTHZ_OK + (
        '    if request.META.get("SERVER_SOFTWARE", "").startswith("gunicorn"):\n'
        '        raise RuntimeError("broken only when served by Gunicorn")\n'),
    "always": HEALTHZ_OK + '    raise RuntimeError("broken for every request")\n',
}


@dataclass(frozen=True)
class Case:
    broken: str  # a key of BROKEN
    reload: str  # hup | auto (rolling for a code-only change) | bluegreen
    outcome: str
    server_errors: int
    window: float
    requests: int
    deploy_s: float

    def line(self) -> str:
        mode = MODES[self.reload]
        return (f"{self.broken:8} {mode:10} {self.outcome:12} {self.server_errors:5} 5xx of "
                f"{self.requests:5}, window {self.window:.2f} s, deploy {self.deploy_s:.1f} s")


class Exposure:
    """The cases, on a blue/green site already live behind Nginx at `url`."""

    def __init__(self, bg: BlueGreenSite, url: str) -> None:
        self.bg = bg
        self.site = bg.site
        self.url = url
        self.views = self.site.read("pages/views.py")
        self.n = 0

    def _deploy_good(self) -> None:
        self.n += 1
        self.bg.set_reload("auto")
        self.site.commit({"pages/views.py": self.views,
                          "pages/bench.txt": f"good {self.n}\n"}, f"Good {self.n}")
        res = self.site.watcher("--once", timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"good deploy failed: {res.stderr[-3000:]}")

    def case(self, broken: str, reload: str) -> Case:
        self.bg.set_reload(reload)
        views = self.views.replace(HEALTHZ_OK, BROKEN[broken])
        assert views != self.views, "the example's healthz view changed: update BROKEN"
        self.site.commit({"pages/views.py": views}, f"Broken healthz ({broken})")
        load = Load(self.url + "/healthz", rate=RATE, threads=4, max_seconds=180,
                    max_requests=100_000).start()
        try:
            time.sleep(1.0)
            started = time.monotonic()
            res = self.site.watcher("--once", timeout=300)
            took = time.monotonic() - started
            time.sleep(1.0)
        finally:
            result = load.stop()
        outcome = str(self.site.state()["history"][-1].get("outcome"))
        if res.returncode == 0:
            outcome = "succeeded!"
        self._deploy_good()
        return Case(broken, reload, outcome, len(result.server_errors), result.window(),
                    result.total, took)

    def run(self, cases: list[tuple[str, str]]) -> list[Case]:
        found = []
        for broken, reload in cases:
            case = self.case(broken, reload)
            print(case.line(), flush=True)
            found.append(case)
        self.bg.set_reload("auto")
        return found


MODES = {"hup": "HUP", "auto": "rolling", "bluegreen": "blue/green swap"}
ALL = [("gunicorn", "hup"), ("gunicorn", "auto"), ("gunicorn", "bluegreen"), ("always", "auto"),
       ("always", "bluegreen")]
TARGET = {("gunicorn", "hup"): "≤ 1 s", ("gunicorn", "auto"): "-",
          ("gunicorn", "bluegreen"): "0", ("always", "auto"): "0", ("always", "bluegreen"): "0"}


def rows(bg: BlueGreenSite, url: str, repeat: int = 3) -> list[list[str]]:
    """The `make bench` rows (benchmarks/run.py), on its blue/green sandbox: each case
    `repeat` times (a window moves by tenths of a second between runs), the median shown."""
    ex = Exposure(bg, url)
    ex._deploy_good()  # start from a release this sandbox deployed, as `run` does
    out = []
    for broken, reload in ALL:
        found = ex.run([(broken, reload)] * repeat)
        c = sorted(found, key=lambda f: f.window)[len(found) // 2]
        what = ("/healthz fails only under Gunicorn" if broken == "gunicorn"
                else "/healthz raises for every request")
        runs = ", ".join(f"{f.server_errors} over {f.window:.2f} s" for f in found)
        outcomes = "/".join(sorted({f.outcome for f in found}))
        out.append(["f", f"broken release served with 5xx, {what}, {MODES[reload]}",
                    f"{c.server_errors} 5xx over {c.window:.2f} s (median)", "n/a",
                    f"{outcomes}; runs: {runs}", TARGET[(broken, reload)]])
    return out


def run(cases: list[tuple[str, str]]) -> list[Case]:
    bg = BlueGreenSite.create(health_timeout=HEALTH_TIMEOUT, publish=True)
    nginx = Nginx(bg.site.base / "nginx", [], bg.site.root)  # upstream: the published socket
    try:
        ex = Exposure(bg, nginx.url)
        ex._deploy_good()
        nginx.start()
        return ex.run(cases)
    finally:
        nginx.stop()
        bg.close()


def main() -> int:
    wanted = sys.argv[1:]
    cases = [c for c in ALL if not wanted or f"{c[0]}-{c[1]}" in wanted]
    run(cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())

