"""`watcher run` as a real subprocess against a real site: polling, webhooks, hints, signals,
the lock, an unreachable remote, /healthz and /metrics (DESIGN §5, §6)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from support.daemon import (
    CHECK_EVENTS,
    DaemonProcess,
    code_change,
    http_get,
    openers,
    post_github_push,
    proc_cmdline,
    wait_served,
    webhook_site,
)
from support.site import Site

from watcher.errors import LockHeld
from watcher.parts import lock

SECRET = "canary-hook-secret-d41e7"
SLOW_HOOK = '[["sleep", "3"]]'
NOW = {"git_interval": "60s"}  # only hints start a check after the first one

pytestmark = pytest.mark.slow


def held_hook(flag: Path) -> str:
    """A pre_switch hook that holds the deploy until the test creates `flag` (60 s at most):
    what a test does "during a deploy" then never races a hook's fixed length on busy cores."""
    wait = f'for i in $(seq 600); do [ -e "{flag}" ] && exit 0; sleep 0.1; done; exit 1'
    return json.dumps([["sh", "-c", wait]])


class Sandbox:
    """The module's site, deployed once, and the port its daemons listen on."""

    def __init__(self, site: Site, port: int) -> None:
        self.site, self.port = site, port

    def daemon(self, **overrides: str) -> DaemonProcess:
        d = DaemonProcess(self.site, **overrides)
        try:
            d.wait_for("check.unchanged")  # listening, and the first check is done
        except BaseException:
            d.close()
            raise
        return d


@pytest.fixture(scope="module")
def box(site_factory: Callable[..., Site], tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    return Sandbox(*webhook_site(site_factory, tmp_path_factory.mktemp("secret"), SECRET))


def stray_hooks(root: Path) -> list[int]:
    """`sleep` hook processes working inside `root` (Gunicorn works there too: left alone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(str(root) + "/") and proc_cmdline(int(entry.name))[:1] == ["sleep"]:
                found.append(int(entry.name))
    return found


def stamp(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def test_poll_deploys_a_push_without_any_hint(box: Sandbox) -> None:
    """With `git.interval = 1s` a push is live within about an interval plus the deploy."""
    with box.daemon() as d:
        sha = code_change(box.site, "polled")
        pushed = time.monotonic()
        took = wait_served(box.site, sha, timeout=60) - pushed
        print(f"\npoll (interval 1s) push->serving: {took:.2f}s")
        assert took < 30  # the speed itself is the benchmark's (webhook -> served row)
        assert d.named("hint.received") == []
        assert d.stop() == 0


def test_signed_webhook_deploys_within_seconds(box: Sandbox) -> None:
    """A signed GitHub push hint deploys at once, not at the next (60 s away) poll."""
    with box.daemon(**NOW) as d:
        sha = code_change(box.site, "webhook")
        sent = time.monotonic()
        assert post_github_push(box.port, SECRET, sha) == 202
        took = wait_served(box.site, sha, timeout=50) - sent
        print(f"\nwebhook->serving latency (code-only change): {took:.2f}s")
        assert took < 30  # well before the poll 60 s away; the speed is the benchmark's
        (hint,) = d.named("hint.received")
        assert hint["source"] == "github"
        (start,) = d.named("deploy.start")
        assert stamp(start) >= stamp(hint)  # the hint started it
        assert d.stop() == 0


def test_metrics_show_checks_deploys_and_live_revision(box: Sandbox) -> None:
    """After a deploy /metrics counts the checks and the deploy and names the live sha."""
    with box.daemon(**NOW) as d:
        sha = code_change(box.site, "metrics")
        assert post_github_push(box.port, SECRET, sha) == 202
        d.wait_for("deploy.finished")
        # The counters move when the check returns to the loop, just after the report is
        # sent: poll for them rather than racing the log line.
        deadline = time.monotonic() + 10
        while True:
            status, text = http_get(box.port, "/metrics")
            if 'result="deployed"} 1.0' in text or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 200
        assert 'watcher_checks_total{result="unchanged"} 1.0' in text
        assert 'watcher_checks_total{result="deployed"} 1.0' in text
        assert 'watcher_deploys_total{outcome="succeeded"} 1.0' in text
        assert 'watcher_deploys_total{outcome="rolled_back"} 0.0' in text
        assert f'watcher_live_revision_info{{sha="{sha}"}} 1.0' in text
        assert text.count("watcher_live_revision_info{") == 1
        assert 'watcher_webhooks_total{forge="github",result="queued"} 1.0' in text
        assert d.stop() == 0


def test_hints_during_a_slow_deploy_coalesce_into_one_check(box: Sandbox) -> None:
    """20 webhooks during a deploy (held in pre_switch) lead to one follow-up check."""
    flag = box.site.base / "coalesced"
    with box.daemon(**NOW, hooks_pre_switch=held_hook(flag)) as d:
        sha = code_change(box.site, "coalesce")
        d.signal(signal.SIGUSR1)
        d.wait_step("pre_switch")
        statuses = [post_github_push(box.port, SECRET, sha) for _ in range(20)]
        assert statuses == [202] * 20
        flag.touch()
        finished = d.wait_for("deploy.finished")
        assert finished["outcome"] == "succeeded"
        d.wait_for("check.unchanged", after=1)  # the follow-up
        time.sleep(1.5)  # room for a second follow-up, which must not come
        names = [e["event"] for e in d.events() if e["event"] in CHECK_EVENTS]
        assert names == ["check.unchanged", "deploy.start", "check.unchanged"]
        assert len(d.named("hint.received")) == 21
        assert box.site.served_revision() == sha
        assert d.stop() == 0


def test_watcher_trigger_causes_a_check(box: Sandbox) -> None:
    """`watcher trigger` exits 0 and the daemon checks the remote right away."""
    with box.daemon(**NOW) as d:
        asked = time.monotonic()
        result = box.site.watcher("trigger", timeout=30)
        assert result.returncode == 0, result.stderr
        assert "took the hint" in result.stdout
        d.wait_for("check.unchanged", after=1, timeout=15)
        assert time.monotonic() - asked < 15  # not the poll, 60 s away
        assert [e["source"] for e in d.named("hint.received")] == ["trigger"]
        key = box.site.root / ".watcher" / "trigger.key"
        assert key.stat().st_mode & 0o777 == 0o600
        assert key.read_text().strip() not in d.text()
        assert d.stop() == 0
    alone = box.site.watcher("trigger", timeout=30)  # no daemon listening now
    assert alone.returncode == 3
    assert "did not answer" in alone.stderr


def test_sigusr1_causes_a_check(box: Sandbox) -> None:
    """SIGUSR1 wakes the daemon for a check now."""
    with box.daemon(**NOW) as d:
        d.signal(signal.SIGUSR1)
        d.wait_for("check.unchanged", after=1, timeout=5)
        assert [e["source"] for e in d.named("hint.received")] == ["sigusr1"]
        assert d.stop() == 0


def test_once_during_a_daemon_deploy_names_the_lock_holder(box: Sandbox) -> None:
    """A `watcher --once` while the daemon deploys exits 3 and says which pid holds the lock."""
    flag = box.site.base / "unlocked"
    with box.daemon(**NOW, hooks_pre_switch=held_hook(flag)) as d:
        code_change(box.site, "locked")
        d.signal(signal.SIGUSR1)
        d.wait_step("pre_switch")
        second = box.site.watcher("--once", timeout=60)
        assert second.returncode == 3, second.stderr[-2000:]
        assert f"pid {d.pid}" in second.stderr
        status = box.site.watcher("status", "--json")
        assert f'"lock_holder": {d.pid}' in status.stdout
        flag.touch()
        assert d.wait_for("deploy.finished")["outcome"] == "succeeded"
        assert d.stop() == 0


def test_lock_of_a_sigkilled_holder_is_taken_over(tmp_path: Path) -> None:
    """lock.acquire refuses while a live process holds the lock, and takes it once it is
    SIGKILLed (the kernel drops the flock with the process)."""
    path = tmp_path / "lock"
    code = ("import sys, time\nfrom pathlib import Path\nfrom watcher.parts import lock\n"
            "with lock.acquire(Path(sys.argv[1])):\n    print('\\nheld', flush=True)\n"
            "    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert "held\n" in iter(holder.stdout.readline, "")  # after structlog's debug line
        assert lock.holder(path) == holder.pid
        with pytest.raises(LockHeld, match=rf"pid {holder.pid}\b"), lock.acquire(path):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert lock.holder(path) is None
    with lock.acquire(path):
        assert lock.holder(path) == os.getpid()


def test_daemon_sigkilled_mid_deploy_is_recovered_by_the_next_once(box: Sandbox) -> None:
    """After a SIGKILL during pre_switch the next `--once` takes the lock, drops the
    half-built release and deploys the commit."""
    site = box.site
    with box.daemon(**NOW, hooks_pre_switch=SLOW_HOOK) as d:
        sha = code_change(site, "killed")
        d.signal(signal.SIGUSR1)
        d.wait_step("pre_switch")
        d.proc.kill()
        d.proc.wait()
    for pid in stray_hooks(site.root / "releases"):  # the hook's `sleep`, in its own session
        os.kill(pid, signal.SIGKILL)
    # The kernel drops the flock with the last descriptor of it: a child the daemon was
    # starting when killed holds one until its exec (close-on-exec), a moment later.
    path = site.root / ".watcher" / "lock"
    deadline = time.monotonic() + 5.0
    while lock.holder(path) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.holder(path) is None, openers(path)
    before = site.live_release()
    result = site.watcher("--once")
    assert result.returncode == 0, result.stderr[-3000:]
    assert site.served_revision() == sha
    assert site.live_release() != before
    assert "recover.remove_release" in result.stderr


def test_sigterm_during_pre_switch_leaves_the_old_release_and_retries(box: Sandbox) -> None:
    """SIGTERM during a 30 s pre_switch hook: exit 0 within seconds, `current` and the served
    revision unchanged, the commit not marked bad, and the next start deploys it."""
    site = box.site
    old_sha, old_release = site.served_revision(), site.live_release()
    with box.daemon(**NOW, hooks_pre_switch='[["sleep", "30"]]') as d:
        sha = code_change(site, "sigterm-early")
        d.signal(signal.SIGUSR1)
        d.wait_step("pre_switch")
        asked = time.monotonic()
        assert d.stop(timeout=20) == 0
        took = time.monotonic() - asked
    print(f"\nSIGTERM during pre_switch -> exit: {took:.2f}s")
    assert took < 10  # the hook is cut short, not waited for (30 s)
    assert site.live_release() == old_release
    assert site.served_revision() == old_sha
    assert sha not in site.state()["bad"]
    assert [p for p in (site.root / "releases").iterdir() if sha[:12] in p.name] == []
    assert stray_hooks(site.root / "releases") == []  # the hook was killed, not orphaned
    with box.daemon(git_interval="1s") as again:
        wait_served(site, sha, timeout=30)
        assert again.stop() == 0


def test_sigterm_after_the_switch_finishes_reload_and_health(box: Sandbox) -> None:
    """SIGTERM while a switched release is being health-checked (a slow /healthz) lets the
    deploy finish and record itself before the daemon exits 0."""
    site = box.site
    views = site.read("pages/views.py")
    slow = views.replace('    """Liveness for watcher and load balancers; never touches the '
                         'database."""\n',
                         '    """Liveness, slowly."""\n    import time\n    time.sleep(1.5)\n')
    assert slow != views
    with box.daemon(**NOW) as d:
        sha = site.commit({"pages/views.py": slow}, "A slow health check")
        d.signal(signal.SIGUSR1)
        d.wait_step("health")
        assert d.stop(timeout=60) == 0
        names = [e["event"] for e in d.events()]
        assert names.index("daemon.stopping") < names.index("deploy.finished")
        assert d.named("deploy.finished")[0]["outcome"] == "succeeded"
        assert [e["outcome"] for e in d.named("step.end") if e["step"] == "health"] == ["ok"]
    assert site.served_revision() == sha
    assert site.state()["releases"][site.state()["live"]]["sha"] == sha
    site.commit({"pages/views.py": views}, "A fast health check again")
    assert site.watcher("--once").returncode == 0


def test_unreachable_remote_backs_off_and_turns_healthz_503(box: Sandbox) -> None:
    """With the remote gone the daemon keeps running, backs off, answers 503 on /healthz
    after 3 failed checks, and 200 again once the remote is back."""
    site = box.site
    moved = site.remote.with_name("remote.moved")
    with box.daemon(git_interval="0.3s") as d:
        assert http_get(box.port, "/healthz")[0] == 200
        site.remote.rename(moved)
        try:
            d.wait_for("check.failed", after=2, timeout=20)
            status, body = http_get(box.port, "/healthz")
            assert status == 503, body
            assert '"consecutive_failures": 3' in body
            metrics = http_get(box.port, "/metrics")[1]
            transient = re.search(r'watcher_checks_total\{result="transient"\} (\d+)', metrics)
            assert transient is not None and int(transient.group(1)) >= 3
            assert d.proc.poll() is None
            t1, t2, t3 = (stamp(e) for e in d.named("check.failed")[:3])
            assert t2 - t1 > 0.45  # more than the 0.3 s interval: backed off
            assert (t3 - t2) > 1.4 * (t2 - t1), (t1, t2, t3)
            failed = d.named("check.failed")[0]
            assert failed["result"] == "transient"
            assert re.search(r"ls-remote .*remote\.git failed", failed["error"])
        finally:
            moved.rename(site.remote)
        already = len(d.named("check.unchanged"))
        d.wait_for("check.unchanged", after=already, timeout=20)
        # The check's event is logged before the loop records its result: poll a moment.
        deadline = time.monotonic() + 10
        while http_get(box.port, "/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http_get(box.port, "/healthz")[0] == 200
        assert d.stop() == 0


def test_a_flood_of_signals_never_wedges_the_daemon(box: Sandbox) -> None:
    """Thousands of SIGUSR1 while the daemon checks and logs every 10 ms: it keeps checking,
    and SIGTERM still stops it with exit 0 (no lock taken inside a signal handler)."""
    with box.daemon(git_interval="0.01s") as d:
        end = time.monotonic() + 3.0
        sent = 0
        while time.monotonic() < end:
            d.signal(signal.SIGUSR1)
            sent += 1
            time.sleep(0.0005)
        before = d.checks()
        time.sleep(1.0)
        assert d.checks() > before + 5, "the daemon stopped checking"
        assert d.stop(timeout=10) == 0
        assert not d.named("check.crashed")
    print(f"\n{sent} SIGUSR1 sent")


def test_a_broken_push_is_tried_once_not_in_a_loop(box: Sandbox) -> None:
    """A commit that fails before the switch is deployed once, then only noted as known bad
    at every poll and hint, while the old release serves; the next push deploys again."""
    site = box.site
    old_sha = site.served_revision()
    views = site.read("pages/views.py")
    with box.daemon() as d:
        bad = site.commit({"pages/views.py": views + "\ndef broken(:\n"}, "A syntax error")
        failed = d.wait_for("deploy.finished", timeout=60)
        assert failed["outcome"] == "failed"
        d.wait_for("check.known_bad", after=2, timeout=20)
        assert post_github_push(box.port, SECRET, bad) == 202
        d.wait_for("check.known_bad", after=3, timeout=20)
        assert len(d.named("deploy.start")) == 1
        assert site.served_revision() == old_sha
        assert 'watcher_deploys_total{outcome="failed"} 1.0' in http_get(box.port, "/metrics")[1]
        fixed = site.commit({"pages/views.py": views}, "Fix the syntax error")
        wait_served(site, fixed, timeout=30)
        assert len(d.named("deploy.start")) == 2
        assert d.stop() == 0
