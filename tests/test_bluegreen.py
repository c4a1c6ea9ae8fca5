"""Blue/green reloads end to end: real supervisord running the two colours, real Gunicorn,
watcher run as a command. The tests share one sandbox and run in file order (each leaves
the site healthy for the next). Runtime: about 40 s on two cores (two venv builds).
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from support.nginx import BlueGreenSite
from support.site import BROKEN_UNDER_GUNICORN, HEALTHZ, log_events, tail, trash_emptied
from support.site import settled as site_settled

from watcher.engine.bluegreen import STOP_TIMEOUT_S

pytestmark = pytest.mark.slow
REQUIREMENTS = "requirements.txt"


@pytest.fixture(scope="module")
def bg() -> Iterator[BlueGreenSite]:
    # mysite: a worker. The shipped setup: Nginx reaches the colour <root>/run/live.sock names.
    # startsecs=5 as shipped: a swap must not wait for it.
    sandbox = BlueGreenSite.create(health_timeout="5s", keep_mysite=True, publish=True,
                                   startsecs=5)
    try:
        yield sandbox
    finally:
        sandbox.close()


def reload_action(res: subprocess.CompletedProcess[str]) -> str:
    plans = [e["steps"] for e in log_events(res.stderr) if e.get("event") == "deploy.plan"]
    return next(s for s in plans[-1] if s.startswith("reload:"))


def once(bg: BlueGreenSite) -> subprocess.CompletedProcess[str]:
    return bg.site.watcher("--once", timeout=240)


def published(bg: BlueGreenSite) -> str:
    """The colour the link Nginx connects to names ("" for none)."""
    try:
        return Path(os.readlink(bg.site.root / "run" / "live.sock")).stem
    except OSError:
        return ""


def test_first_deploy_starts_blue(bg: BlueGreenSite) -> None:
    """The first deploy starts blue only, on the new release, and records blue as live."""
    sha = bg.site.head()
    res = once(bg)
    assert res.returncode == 0, tail(res)
    assert bg.statename("blue") == "RUNNING"
    assert bg.statename("green") == "STOPPED"
    assert bg.served("blue") == sha
    assert bg.recorded_colour() == "blue" and published(bg) == "blue"


def test_code_only_change_reloads_the_live_colour_rolling(bg: BlueGreenSite) -> None:
    """A code-only change reloads blue in place (rolling: same master pid) and the worker
    program, and green stays stopped."""
    pid, worker = bg.program("blue")["pid"], bg.site.master_pid()
    sha = bg.site.commit({"pages/about.txt": "code only\n"}, "A code-only change")
    res = once(bg)
    assert res.returncode == 0, tail(res)
    assert reload_action(res) == "reload:rolling"
    assert bg.program("blue")["pid"] == pid
    assert bg.site.master_pid() == worker
    assert settled(bg, "blue", sha) == sha
    assert bg.statename("green") == "STOPPED"
    assert bg.recorded_colour() == "blue"


def test_venv_change_swaps_to_green(bg: BlueGreenSite) -> None:
    """A requirements change starts green on the new release and stops blue; the worker
    program is restarted on the new venv. Green is health-checked from its start and
    published once healthy, while Supervisord still counts its startsecs (5 s here)."""
    worker = bg.site.master_pid()
    reqs = bg.site.read(REQUIREMENTS)
    sha = bg.site.commit({REQUIREMENTS: reqs + "# a new venv\n"}, "Change the requirements")
    res = once(bg)
    assert res.returncode == 0, tail(res)
    assert reload_action(res) == "reload:bluegreen"
    healthy = [e for e in log_events(res.stderr) if e.get("event") == "bluegreen.healthy"]
    assert [e["state"] for e in healthy] == ["STARTING"], healthy  # not after startsecs
    assert bg.statename("green") == "RUNNING"
    assert bg.served("green") == sha
    assert bg.statename("blue") == "STOPPED"
    assert bg.recorded_colour() == "green" and published(bg) == "green"
    assert bg.site.state()["last_check"]["result"] == "deployed"
    assert bg.site.master_pid() != worker
    # a worker program is not health-checked: RUNNING after its startsecs (1 s) is all
    # watcher waits for, and on busy cores the stand-in Gunicorn may not listen yet
    assert site_settled(bg.site, sha) == sha


def test_rollback_reverses_the_swap(bg: BlueGreenSite) -> None:
    """`watcher rollback` to the release with the old venv starts blue on it and stops
    green; state records blue for the release now live."""
    previous = bg.site.state()["history"][-2]["to_sha"]
    res = bg.site.watcher("rollback", timeout=120)
    assert res.returncode == 0, tail(res)
    assert bg.statename("blue") == "RUNNING"
    assert bg.served("blue") == previous
    assert bg.statename("green") == "STOPPED"
    assert bg.recorded_colour() == "blue"


def test_unhealthy_idle_colour_rolls_back_with_the_old_colour_serving(
        bg: BlueGreenSite) -> None:
    """When green fails its health check it is stopped, blue (never touched) keeps serving
    the old release, and the deploy is rolled_back with exit code 1; health.failures 5xx
    in a row end green's check without waiting for health.timeout."""
    bg.set_reload("bluegreen")  # swap on every deploy: no venv build needed here
    views = bg.site.read("pages/views.py")
    assert HEALTHZ in views
    live = bg.site.live_release()
    blue_pid, old_sha = bg.program("blue")["pid"], bg.served("blue")
    # Broken only when Gunicorn serves it: the smoke requests before the switch pass.
    broken = views.replace(HEALTHZ, (
        'if request.META.get("SERVER_SOFTWARE", "").startswith("gunicorn"):\n'
        '        return HttpResponse("broken\\n", status=503)\n    ') + HEALTHZ)
    bg.site.commit({"pages/views.py": broken}, "Break the health check under Gunicorn")
    res = once(bg)
    assert res.returncode == 1, tail(res)
    assert bg.site.state()["history"][-1]["outcome"] == "rolled_back"
    assert bg.statename("green") == "STOPPED"
    assert bg.program("blue")["pid"] == blue_pid
    assert bg.served("blue") == old_sha
    assert bg.site.live_release() == live
    assert bg.recorded_colour() == "blue" and published(bg) == "blue"
    assert "bluegreen.published" not in res.stderr  # green was never reachable from Nginx
    assert "bluegreen.kept" in [e.get("event") for e in log_events(res.stderr)]
    assert "failed 3 times in a row" in bg.site.state()["history"][-1]["error"]["message"]
    bg.site.commit({"pages/views.py": views}, "Fix the health check")
    bg.set_reload("auto")
    assert once(bg).returncode == 0


def test_supervisord_wins_over_state_for_the_live_colour(bg: BlueGreenSite) -> None:
    """When state names one colour but only the other runs (e.g. after a reboot that
    autostarted it), a code-only deploy reloads the running one in place and records it."""
    recorded = bg.recorded_colour()
    running = "green" if recorded == "blue" else "blue"
    rpc = bg.site.sv.rpc()
    rpc.startProcess(f"mysite_{running}", True)
    rpc.stopProcess(f"mysite_{recorded}", True)
    pid = bg.program(running)["pid"]
    sha = bg.site.commit({"pages/about.txt": "again\n"}, "Another code-only change")
    res = once(bg)
    assert res.returncode == 0, tail(res)
    assert reload_action(res) == "reload:rolling"
    assert bg.program(running)["pid"] == pid
    assert settled(bg, running, sha) == sha
    assert bg.statename(recorded) == "STOPPED"
    assert bg.recorded_colour() == running and published(bg) == running
    events = [e.get("event") for e in log_events(res.stderr)]
    assert "bluegreen.state_disagrees" in events
    assert "bluegreen.republish" in events  # the link named the stopped colour


def test_both_colours_running_converges_on_the_recorded_one(bg: BlueGreenSite) -> None:
    """With both colours up and the link on the other one (a kill between the link's
    re-pointing and the old colour's stop), a code-only deploy reloads the recorded colour in
    place, points the link back at it and only then stops the other, so one version serves."""
    live = bg.recorded_colour()
    other = "green" if live == "blue" else "blue"
    bg.site.sv.rpc().startProcess(f"mysite_{other}", True)
    link = bg.site.root / "run" / "live.sock"
    link.unlink()
    link.symlink_to(bg.site.root / "run" / f"{other}.sock")
    pid = bg.program(live)["pid"]
    sha = bg.site.commit({"pages/about.txt": "both\n"}, "Code-only with both colours up")
    res = once(bg)
    assert res.returncode == 0, tail(res)
    assert bg.program(live)["pid"] == pid
    assert settled(bg, live, sha) == sha
    assert bg.statename(other) == "STOPPED"
    assert bg.recorded_colour() == live and published(bg) == live


def test_kill_mid_swap_recovers_to_one_colour(bg: BlueGreenSite) -> None:
    """A watcher SIGKILLed after the idle colour came up and before the old one stopped
    leaves both running; the next `--once` recovers and deploys, and one colour serves."""
    bg.set_reload("bluegreen")
    sha = bg.site.commit({"pages/about.txt": "killed\n"}, "Deploy that gets killed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "--once", "--config", str(bg.site.config)],
            stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            deadline = time.monotonic() + 120
            while "bluegreen.healthy" not in _read(err):  # now in the settle pause
                assert proc.poll() is None and time.monotonic() < deadline, _read(err)[-3000:]
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
    assert bg.statename("blue") == bg.statename("green") == "RUNNING"
    res = once(bg)
    bg.set_reload("auto")
    assert res.returncode == 0, tail(res)
    up = [c for c in ("blue", "green") if bg.statename(c) == "RUNNING"]
    assert up == [bg.recorded_colour()] == [published(bg)]
    assert settled(bg, up[0], sha) == sha
    assert "recover.switch_back" in [e.get("event") for e in log_events(res.stderr)]


def _read(f: IO[str]) -> str:
    f.seek(0)
    return f.read()


def settled(bg: BlueGreenSite, colour: str, expected: str, timeout: float = 5.0) -> str:
    """What a colour serves once its old workers are gone (three answers in a row)."""
    deadline = time.monotonic() + timeout
    streak, seen = 0, ""
    while time.monotonic() < deadline and streak < 3:
        seen = bg.served(colour)
        streak = streak + 1 if seen == expected else 0
        time.sleep(0.1)
    return seen


def test_a_colour_whose_masters_release_was_pruned_is_swapped_not_hupped(
        bg: BlueGreenSite) -> None:
    """Rolling reloads never move a colour's master, so keep_releases code-only deploys
    prune the release it started in. The next reload swaps colours instead of a HUP (which
    would kill that master) or a stop and start (which would serve the new release
    unchecked for startsecs): a release broken under Gunicorn is then caught on the idle
    colour and never published, and a good one is served by the other colour."""
    live = bg.recorded_colour()
    master = bg.program(live)["pid"]
    views = bg.site.read("pages/views.py")
    for n in range(3):  # keep_releases = 3
        bg.site.commit({"pages/about.txt": f"prune {n}\n"}, f"Code change {n}")
        res = once(bg)
        assert res.returncode == 0 and reload_action(res) == "reload:rolling", tail(res)
    good = bg.site.head()
    assert trash_emptied(bg.site.root), "pruned releases were not deleted"
    assert bg.program(live)["pid"] == master
    assert os.readlink(f"/proc/{master}/cwd").endswith(" (deleted)")

    bg.site.commit({"pages/views.py": views.replace(HEALTHZ, BROKEN_UNDER_GUNICORN + HEALTHZ)},
                   "A health check that fails only under Gunicorn")
    res = once(bg)
    assert res.returncode == 1 and res.stdout.startswith("rolled_back:"), tail(res)
    events = [e["event"] for e in log_events(res.stderr)]
    assert "bluegreen.master_dir_gone" in events and "supervisor.hup" not in events, tail(res)
    assert "bluegreen.published" not in events  # the broken colour was never reachable
    assert bg.program(live)["pid"] == master and published(bg) == live
    assert settled(bg, live, good) == good

    fixed = bg.site.commit({"pages/views.py": views + "\n# fixed\n"}, "Health fixed")
    res = once(bg)
    assert res.returncode == 0, tail(res)
    now = bg.recorded_colour()
    assert now != live and published(bg) == now and bg.served(now) == fixed
    assert bg.statename(live) == "STOPPED"


def test_shipped_bluegreen_configs_agree() -> None:
    """The shipped blue/green programs bind the ports of the health URLs and the sockets
    the published link may name, run from the `current` symlink, and exactly one of them
    starts with supervisord; Nginx's upstream names only the link (the two ports only in
    the commented two-port alternative)."""
    root = Path(__file__).resolve().parents[1]
    nginx = (root / "examples" / "nginx" / "mysite.conf").read_text()
    upstream = nginx[nginx.index("upstream mysite {"):]
    upstream = upstream[:upstream.index("}")]
    active = re.findall(r"^\s*server (\S+)", upstream, flags=re.M)
    commented = set(re.findall(r"^\s*# server 127\.0\.0\.1:(\d+) ", upstream, flags=re.M))
    autostart, ports, sockets = [], set(), set()
    for colour in ("blue", "green"):
        ini = configparser.ConfigParser(interpolation=None)
        ini.read(root / "supervisor" / "conf.d-bluegreen" / f"mysite_{colour}.conf")
        program = ini[f"program:mysite_{colour}"]
        binds = re.findall(r"--bind (\S+)", program["command"])
        ports.add(binds[0].removeprefix("127.0.0.1:"))
        sockets.add(binds[1])
        assert binds == [binds[0], f"unix:/srv/mysite/run/{colour}.sock"]
        assert "GUNICORN_BIND" not in program["environment"]  # the command line binds
        assert "--chdir /srv/mysite/current " in program["command"]
        assert "--preload" not in program["command"]
        assert int(program["stopwaitsecs"]) < STOP_TIMEOUT_S
        autostart.append(program.getboolean("autostart"))
    assert active == ["unix:/srv/mysite/run/live.sock"] * 2
    assert ports == commented == {"8001", "8002"}
    assert sockets == {"unix:/srv/mysite/run/blue.sock", "unix:/srv/mysite/run/green.sock"}
    assert autostart == [True, False]
