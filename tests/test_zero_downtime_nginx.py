"""Zero downtime through a real Nginx (the shipped examples/nginx/mysite.conf, whose upstream
is the published socket `<root>/run/live.sock`): steady load during a rolling reload and a
blue/green swap drops nothing; a release broken only under Gunicorn never gets a request from
Nginx (its colour is health-checked before the link names it); a link that reaches nothing
is re-pointed by the next run; and the same load during a plain stop+start of the only
upstream does drop requests, which shows the load can see a failure.
Runtime: about 70 s on two cores (two venv builds, a few short load runs).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.load import Load, LoadResult
from support.nginx import BlueGreenSite, Nginx
from support.site import tail

from watcher.parts.gunicorn import Workers, workers

pytestmark = pytest.mark.slow
RATE = 120  # requests per second, from 4 threads over keep-alive connections
PUBLISHED: list[int] = []  # Nginx's upstream as shipped: the published socket
HEALTHZ_OK = '''def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for watcher and load balancers; never touches the database."""
'''
ONLY_UNDER_GUNICORN = HEALTHZ_OK + (
    '    if request.META.get("SERVER_SOFTWARE", "").startswith("gunicorn"):\n'
    '        raise RuntimeError("broken only when served by Gunicorn")\n')


@pytest.fixture(scope="module")
def bg() -> Iterator[BlueGreenSite]:
    sandbox = BlueGreenSite.create(health_timeout="10s", publish=True, access_logs=True)
    try:
        res = sandbox.site.watcher("--once", timeout=240)
        assert res.returncode == 0, res.stderr[-3000:]
        yield sandbox
    finally:
        sandbox.close()


def deploy_under_load(bg: BlueGreenSite, url: str, after: float = 1.0
                      ) -> tuple[subprocess.CompletedProcess[str], LoadResult]:
    """`watcher --once` under steady GETs of `url`/healthz, and `after` seconds more."""
    load = Load(url + "/healthz", rate=RATE, max_seconds=120).start()
    try:
        res = bg.site.watcher("--once", timeout=240)
        time.sleep(after)
    finally:
        result = load.stop()
    return res, result


def link(bg: BlueGreenSite) -> str:
    """The colour <root>/run/live.sock names."""
    return Path(os.readlink(bg.site.root / "run" / "live.sock")).stem


def test_code_only_rolling_reload_under_load_drops_nothing(bg: BlueGreenSite,
                                                          tmp_path: Path) -> None:
    """Load through Nginx across a code-only deploy (a rolling reload of the live colour:
    TTIN, the new workers load the app, TTOU): no failed request, the same Gunicorn master,
    its worker count back to 2, and the new sha served by the end."""
    colour = bg.recorded_colour()
    master = bg.program(colour)["pid"]
    new = bg.site.commit({"pages/about.txt": "code only\n"}, "A code-only change")
    with Nginx(tmp_path / "nginx", PUBLISHED, bg.site.root) as nx:
        res, result = deploy_under_load(bg, nx.url)
    print(f"\nrolling deploy under load: {result.total} requests, {result.failed} failed, "
          f"p99 {result.p99() * 1000:.1f} ms")
    assert res.returncode == 0, tail(res)
    assert "reload.rolling" in res.stderr and "supervisor.hup" not in res.stderr
    assert bg.program(colour)["pid"] == master
    deadline = time.monotonic() + 30
    while workers(master) != Workers(2, 2):
        assert time.monotonic() < deadline, f"workers: {workers(master)}"
        time.sleep(0.1)
    assert result.failed == 0, result.errors
    assert result.total >= 100
    assert result.bodies.get(f"ok {new}", 0) > 0
    assert bg.served(colour) == new


def test_bluegreen_deploy_under_load_drops_nothing(bg: BlueGreenSite, tmp_path: Path) -> None:
    """Load through Nginx across a venv-changing deploy: blue hands over to green with zero
    failed requests, answers name the old sha and then the new one, and the link is pointed
    at green only after green passed its health check."""
    old = bg.site.head()
    assert link(bg) == "blue"
    reqs = bg.site.read("requirements.txt")
    new = bg.site.commit({"requirements.txt": reqs + "# new venv\n"}, "Change requirements")
    with Nginx(tmp_path / "nginx", PUBLISHED, bg.site.root) as nx:
        res, result = deploy_under_load(bg, nx.url)  # and a little after the old one stopped
        log = nx.log_tail()
    print(f"\nblue/green deploy under load: {result.total} requests, {result.failed} failed, "
          f"p99 {result.p99() * 1000:.1f} ms")
    assert res.returncode == 0, tail(res)
    assert bg.statename("green") == "RUNNING" and bg.statename("blue") == "STOPPED"
    assert link(bg) == "green"
    assert res.stderr.index("bluegreen.healthy") < res.stderr.index("bluegreen.published")
    assert res.stderr.index("bluegreen.published") < res.stderr.index("bluegreen.swapped")
    assert result.failed == 0, f"{result.errors}; nginx: {log}"
    assert result.total >= 300
    assert result.bodies.get(f"ok {old}", 0) > 0 and result.bodies.get(f"ok {new}", 0) > 0


def test_release_broken_under_gunicorn_never_gets_a_request_from_nginx(
        bg: BlueGreenSite, tmp_path: Path) -> None:
    """A /healthz that fails only when Gunicorn serves it (the smoke requests cannot see it),
    deployed as a blue/green swap under load: the idle colour fails its health check on its
    own port, the link never names it, and Nginx sends it nothing: 0 5xx, every request
    served by the old release. Its access log shows the health check's requests (over TCP)
    and none from Nginx (over the socket)."""
    live, old = bg.recorded_colour(), bg.site.head()
    idle = "green" if live == "blue" else "blue"
    views = bg.site.read("pages/views.py")
    assert HEALTHZ_OK in views, "the example's healthz view changed: update HEALTHZ_OK"
    bg.set_reload("bluegreen")
    bad = bg.site.commit({"pages/views.py": views.replace(HEALTHZ_OK, ONLY_UNDER_GUNICORN)},
                         "A healthz that fails under Gunicorn")
    access = bg.access_log(idle)
    access.unlink(missing_ok=True)
    try:
        with Nginx(tmp_path / "nginx", PUBLISHED, bg.site.root) as nx:
            res, result = deploy_under_load(bg, nx.url, after=0.5)
    finally:
        bg.set_reload("auto")
    assert res.returncode == 1, tail(res)
    assert bg.site.state()["history"][-1]["to_sha"] == bad
    assert "bluegreen.published" not in res.stderr
    assert link(bg) == live and bg.statename(idle) == "STOPPED"
    assert result.server_errors == [] and result.failed == 0, result.errors
    assert set(result.bodies) == {f"ok {old}"}, result.bodies
    lines = access.read_text().splitlines()
    checked = [ln for ln in lines if ln.startswith("127.0.0.1 ")]
    assert checked and all(" 500 " in ln for ln in checked), lines[:5]
    assert len(checked) == len(lines), f"requests from Nginx reached {idle}: {lines}"
    bg.site.commit({"pages/views.py": views}, "A good healthz again")
    res = bg.site.watcher("--once", timeout=240)
    assert res.returncode == 0, tail(res)


def test_a_link_that_reaches_nothing_is_pointed_at_the_running_colour(
        bg: BlueGreenSite, tmp_path: Path) -> None:
    """After a reboot only blue autostarts, and the link may name the colour that no longer
    runs (or be gone, /run being a tmpfs): the next `watcher --once`, with nothing to deploy,
    points it at the running colour and Nginx serves again."""
    live = bg.recorded_colour()
    idle = "green" if live == "blue" else "blue"
    path = bg.site.root / "run" / "live.sock"
    path.unlink()
    path.symlink_to(bg.site.root / "run" / f"{idle}.sock")
    check = bg.site.watcher("check", timeout=120)
    assert f"{path} -> {idle}, nothing answers" in check.stdout, check.stdout
    res = bg.site.watcher("--once", timeout=120)
    assert res.returncode == 0, tail(res)
    assert "bluegreen.republish" in res.stderr
    assert link(bg) == live
    check = bg.site.watcher("check", timeout=120)
    assert f"{path} -> {live}, answers" in check.stdout, check.stdout
    with Nginx(tmp_path / "nginx", PUBLISHED, bg.site.root) as nx:
        load = Load(nx.url + "/healthz", rate=RATE, max_seconds=5).start()
        time.sleep(1.0)
        result = load.stop()
    assert result.failed == 0 and result.ok > 0, result.errors
    res = bg.site.watcher("--once", timeout=120)  # a link that answers is left alone
    assert res.returncode == 0 and "bluegreen.republish" not in res.stderr, tail(res)


def test_plain_restart_under_load_drops_requests(bg: BlueGreenSite, tmp_path: Path) -> None:
    """With Nginx pointing at the live program only, a stop+start of it (the seed's
    `supervisorctl restart`) fails requests under the same load."""
    live = bg.recorded_colour()
    with Nginx(tmp_path / "nginx", [bg.ports[live]], bg.site.root) as nx:
        load = Load(nx.url + "/healthz", rate=RATE, max_seconds=60).start()
        try:
            time.sleep(0.5)
            rpc = bg.site.sv.rpc()
            rpc.stopProcess(f"mysite_{live}", True)
            rpc.startProcess(f"mysite_{live}", True)
            time.sleep(0.5)
        finally:
            result = load.stop()
    print(f"\nplain restart under load: {result.total} requests, {result.failed} failed "
          f"{result.errors}")
    assert bg.statename(live) == "RUNNING"
    assert result.failed > 0, f"no failures in {result.total} requests"
    assert result.ok > 0


def test_bluegreen_ready_url_ends_the_settle_without_loss(bg: BlueGreenSite,
                                                          tmp_path: Path) -> None:
    """The two-port setup (both ports in Nginx's upstream, no bluegreen.publish): with
    bluegreen.ready_url (the health path through Nginx), the swap stops the old colour as
    soon as Nginx serves the new sha, before the fixed settle, and drops nothing.
    (Last in this module: it swaps the colours and drops the publish keys.)"""
    old_colour = bg.recorded_colour()
    text = bg.site.config.read_text()
    bg.site.config.write_text(re.sub(r"^(sockets|publish) = .*\n", "", text, flags=re.M))
    reqs = bg.site.read("requirements.txt")
    new = bg.site.commit({"requirements.txt": reqs + "# ready_url\n"}, "Requirements again")
    with Nginx(tmp_path / "nginx", [bg.ports["blue"], bg.ports["green"]], bg.site.root) as nx:
        bg.set_ready_url(nx.url + "/healthz")
        try:
            res, result = deploy_under_load(bg, nx.url)
        finally:
            bg.set_ready_url("")
            bg.site.config.write_text(text)
        log = nx.log_tail()
    print(f"\nready_url swap under load: {result.total} requests, {result.failed} failed, "
          f"p99 {result.p99() * 1000:.1f} ms")
    assert res.returncode == 0, tail(res)
    assert "bluegreen.ready" in res.stderr
    assert bg.statename(old_colour) == "STOPPED"
    assert result.failed == 0, f"{result.errors}; nginx: {log}"
    assert result.bodies.get(f"ok {new}", 0) > 0
