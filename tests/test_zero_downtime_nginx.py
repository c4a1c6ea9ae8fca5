"""Zero downtime through a real Nginx (the shipped examples/nginx/mysite.conf): steady load
during a blue/green deploy drops nothing, and the same load during a plain stop+start of
the only upstream does drop requests, which shows the load can see a failure.
Runtime: about 50 s on two cores (two venv builds, three short load runs).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.load import Load
from support.nginx import BlueGreenSite, Nginx

from watcher.parts.gunicorn import Workers, workers

pytestmark = pytest.mark.slow
RATE = 120  # requests per second, from 4 threads over keep-alive connections


@pytest.fixture(scope="module")
def bg() -> Iterator[BlueGreenSite]:
    sandbox = BlueGreenSite.create(health_timeout="10s")
    try:
        res = sandbox.site.watcher("--once", timeout=240)
        assert res.returncode == 0, res.stderr[-3000:]
        yield sandbox
    finally:
        sandbox.close()


def tail(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\nstderr: {res.stderr[-3000:]}"


def test_code_only_rolling_reload_under_load_drops_nothing(bg: BlueGreenSite,
                                                          tmp_path: Path) -> None:
    """Load through Nginx across a code-only deploy (a rolling reload of the live colour:
    TTIN, the new workers load the app, TTOU): no failed request, the same Gunicorn master,
    its worker count back to 2, and the new sha served by the end."""
    colour = bg.recorded_colour()
    master = bg.program(colour)["pid"]
    new = bg.site.commit({"pages/about.txt": "code only\n"}, "A code-only change")
    with Nginx(tmp_path / "nginx", [bg.ports["blue"], bg.ports["green"]], bg.site.root) as nx:
        load = Load(nx.url + "/healthz", rate=RATE, max_seconds=60).start()
        try:
            res = bg.site.watcher("--once", timeout=120)
            time.sleep(1.0)
        finally:
            result = load.stop()
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
    failed requests, and answers name the old sha and then the new one."""
    old = bg.site.head()
    reqs = bg.site.read("requirements.txt")
    new = bg.site.commit({"requirements.txt": reqs + "# new venv\n"}, "Change requirements")
    with Nginx(tmp_path / "nginx", [bg.ports["blue"], bg.ports["green"]], bg.site.root) as nx:
        load = Load(nx.url + "/healthz", rate=RATE, max_seconds=120).start()
        try:
            res = bg.site.watcher("--once", timeout=240)
            time.sleep(1.0)  # a little load after the old colour has stopped
        finally:
            result = load.stop()
        log = nx.log_tail()
    print(f"\nblue/green deploy under load: {result.total} requests, {result.failed} failed, "
          f"p99 {result.p99() * 1000:.1f} ms")
    assert res.returncode == 0, tail(res)
    assert bg.statename("green") == "RUNNING" and bg.statename("blue") == "STOPPED"
    assert result.failed == 0, f"{result.errors}; nginx: {log}"
    assert result.total >= 300
    assert result.bodies.get(f"ok {old}", 0) > 0 and result.bodies.get(f"ok {new}", 0) > 0


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
    """With bluegreen.ready_url (the health path through Nginx), the swap stops the old
    colour as soon as Nginx serves the new sha, before the fixed settle, and drops nothing.
    (Last in this module: it swaps the colours the tests above expect.)"""
    old_colour = bg.recorded_colour()
    reqs = bg.site.read("requirements.txt")
    new = bg.site.commit({"requirements.txt": reqs + "# ready_url\n"}, "Requirements again")
    with Nginx(tmp_path / "nginx", [bg.ports["blue"], bg.ports["green"]], bg.site.root) as nx:
        bg.set_ready_url(nx.url + "/healthz")
        load = Load(nx.url + "/healthz", rate=RATE, max_seconds=120).start()
        try:
            res = bg.site.watcher("--once", timeout=240)
            time.sleep(1.0)
        finally:
            result = load.stop()
            bg.set_ready_url("")
        log = nx.log_tail()
    print(f"\nready_url swap under load: {result.total} requests, {result.failed} failed, "
          f"p99 {result.p99() * 1000:.1f} ms")
    assert res.returncode == 0, tail(res)
    assert "bluegreen.ready" in res.stderr
    assert bg.statename(old_colour) == "STOPPED"
    assert result.failed == 0, f"{result.errors}; nginx: {log}"
    assert result.bodies.get(f"ok {new}", 0) > 0
