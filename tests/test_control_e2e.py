"""End-to-end control of what gets deployed and when, on one real Site (issue 14): path
filters, pause (with `--once`, `deploy REV`, and a daemon taking a signed webhook), signed
commits with real ssh keys, semver tags, and deploy windows with an injected clock.
Each scenario sets its keys by WATCHER_* overrides; every deploy after the first is code-only
(HUP, one venv). Runtime: about 2-4 minutes on two loaded cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from support.daemon import DaemonProcess, code_change, http_get, post_github_push, wait_served
from support.site import Site, git, log_events, settled
from support.supervisord import free_port

from watcher.config_load import load
from watcher.daemon.loop import Daemon
from watcher.schedule import DAYS

pytestmark = pytest.mark.slow
SECRET = "canary-hook-secret-14c0"


class Box:
    def __init__(self, site: Site, port: int) -> None:
        self.site, self.port = site, port

    def watcher(self, *args: str, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
        full = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
        full.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "watcher", *args, "--config", str(self.site.config)],
            capture_output=True, text=True, timeout=timeout, env=full, check=False)

    def reports(self) -> list[dict[str, Any]]:
        return [r.json for r in self.site.api.requests if isinstance(r.json, dict)]

    def report_for(self, sha: str, timeout: float = 30.0) -> dict[str, Any]:
        """The report of the deploy of `sha`, once the logging API has it (a daemon sends it
        just after logging the end of the deploy)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.reports() if r.get("to_sha") == sha]
            if found:
                return found[-1]
            assert time.monotonic() < deadline, f"no report for {sha[:12]}"
            time.sleep(0.1)

    def last_check(self) -> dict[str, Any]:
        return dict(self.site.state()["last_check"])


@pytest.fixture(scope="module")
def box(site_factory: Callable[..., Site], tmp_path_factory: pytest.TempPathFactory) -> Box:
    secret = tmp_path_factory.mktemp("secret") / "webhook.secret"
    secret.write_text(SECRET + "\n")
    port = free_port()
    site = site_factory(health_timeout="10s", extra_config=(
        f'[webhook]\nlisten = "127.0.0.1:{port}"\nsecret_file = "{secret}"\n'))
    first = site.watcher("--once", timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    return Box(site, port)


@pytest.fixture
def resumed(box: Box) -> Iterator[None]:
    yield
    box.watcher("resume")


def test_a_commit_touching_only_docs_is_skipped(box: Box) -> None:
    """With `ignore_paths = ["docs/"]`, a commit changing only docs/ is recorded as skipped
    (exit 0, the live release stays); the next real deploy lists it in the report's commits,
    with trigger "cli" and the operator as actor."""
    site, env = box.site, {"WATCHER_GIT_IGNORE_PATHS": '["docs/"]'}
    live = site.live_release()
    docs = site.commit({"docs/index.md": "# Docs\n"}, "Document the site")
    res = box.watcher("--once", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert site.live_release() == live
    check = box.last_check()
    assert (check["result"], check["remote_sha"]) == ("skipped", docs)
    assert "ignore_paths" in check["reason"]
    assert "skipped" in res.stdout
    code = code_change(site, "after-docs")
    res = box.watcher("--once", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert settled(site, code) == code
    report = box.reports()[-1]
    assert [c["sha"] for c in report["commits"]] == [code, docs]
    assert report["trigger"] == "cli" and report["actor"]
    assert site.state()["history"][-1]["trigger"] == "cli"


def test_pause_holds_once_but_not_deploy_rev(box: Box, resumed: None) -> None:
    """While paused, `--once` records the waiting head and exits 0 without deploying;
    `status` shows who paused, why and the waiting head; `deploy REV` still deploys."""
    site = box.site
    assert box.watcher("pause", "--reason", "db upgrade").returncode == 0
    live = site.live_release()
    sha = code_change(site, "while-paused")
    res = box.watcher("--once")
    assert res.returncode == 0 and "waiting" in res.stdout, res.stdout + res.stderr[-2000:]
    assert site.live_release() == live
    status = json.loads(box.watcher("status", "--json").stdout)
    assert status["paused"]["reason"] == "db upgrade"
    assert status["waiting"]["sha"] == sha and status["waiting"]["reason"] == "paused"
    res = box.watcher("deploy", sha)
    assert res.returncode == 0, res.stderr[-2000:]
    assert settled(site, sha) == sha
    assert box.reports()[-1]["trigger"] == "cli"


def test_paused_daemon_takes_a_signed_webhook_and_waits(box: Box, resumed: None) -> None:
    """A paused daemon answers a signed GitHub push 202, checks, and deploys nothing;
    /metrics shows watcher_paused 1; `resume` makes it deploy the waiting head at once."""
    site = box.site
    assert box.watcher("pause", "--reason", "freeze").returncode == 0
    live_sha = site.served_revision()
    with DaemonProcess(site, git_interval="60s") as d:
        d.wait_for("check.unchanged")
        sha = code_change(site, "webhook-paused")
        assert post_github_push(box.port, SECRET, sha) == 202
        held = d.wait_for("check.waiting")
        assert held["sha"] == sha[:12] and held["hold"] == "paused"
        assert site.served_revision() == live_sha
        _, metrics = http_get(box.port, "/metrics")
        assert "watcher_paused 1.0" in metrics and "watcher_waiting 1.0" in metrics
        res = box.watcher("resume")
        assert res.returncode == 0 and "the daemon checks now" in res.stdout
        wait_served(site, sha, timeout=60)
        d.wait_for("deploy.finished")
        metrics = metrics_once(box.port, "watcher_waiting 0.0")
        assert "watcher_paused 0.0" in metrics
        assert box.report_for(sha)["trigger"] == "trigger"
        code = code_change(site, "webhook-resumed")
        assert post_github_push(box.port, SECRET, code) == 202
        wait_served(site, code, timeout=60)
        d.wait_for("deploy.finished", after=1)
        assert box.report_for(code)["trigger"] == "webhook:github"
        assert d.stop() == 0


def metrics_once(port: int, line: str, timeout: float = 20.0) -> str:
    """/metrics once it shows `line` (the daemon updates them just after logging the end of
    a deploy); the last scrape when it never does, for the assertion's message."""
    deadline = time.monotonic() + timeout
    while True:
        _, text = http_get(port, "/metrics")
        if line in text or time.monotonic() > deadline:
            assert line in text, text[-1500:]
            return text
        time.sleep(0.1)


def _ssh_keys(base: Path) -> tuple[Path, Path]:
    for who in ("alice", "mallory"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f",
                        str(base / who)], check=True, timeout=30)
    signers = base / "allowed_signers"
    signers.write_text(f"alice@example.com {(base / 'alice.pub').read_text()}")
    return base / "alice.pub", signers


def signed_commit(site: Site, key: Path, tag: str) -> str:
    views = "pages/views.py"
    (site.work / views).write_text(site.read(views) + f"# {tag}\n")
    git("add", "-A", cwd=site.work)
    git("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-q", "-S",
        "-m", f"Signed: {tag}", cwd=site.work)
    git("push", "-q", "origin", "main", cwd=site.work)
    return site.head()


def test_unsigned_and_foreign_commits_are_refused(box: Box, tmp_path: Path) -> None:
    """`verify = "ssh"`: `plan` shows an unsigned head would be refused (exit 1); `--once`
    refuses it before export (failed, exit 1, marked bad, no release dir made), the report
    says "not signed"; a head signed by a key not in
    the list names the key; a head signed by alice deploys."""
    site = box.site
    alice, signers = _ssh_keys(tmp_path)
    env = {"WATCHER_GIT_VERIFY": "ssh", "WATCHER_GIT_ALLOWED_SIGNERS_FILE": str(signers)}
    live, releases = site.live_release(), site.releases()
    unsigned = code_change(site, "unsigned")
    res = box.watcher("plan", "--json", env=env)
    assert res.returncode == 1, res.stderr[-2000:]
    planned = json.loads(res.stdout)
    assert planned["decision"] == "refuse"
    assert planned["signature"][0]["verdict"] == "unsigned"
    assert site.releases() == releases
    res = box.watcher("--once", env=env)
    assert res.returncode == 1, res.stderr[-2000:]
    assert site.live_release() == live and site.releases() == releases
    report = box.reports()[-1]
    assert report["outcome"] == "failed" and report["error"]["step"] == "verify"
    assert "is not signed" in report["error"]["message"]
    assert unsigned in site.state()["bad"]
    foreign = signed_commit(site, tmp_path / "mallory.pub", "mallory")
    assert box.watcher("--once", env=env).returncode == 1
    error = box.reports()[-1]["error"]
    assert "key not allowed" in error["message"] and "SHA256:" in error["message"]
    assert foreign in site.state()["bad"] and site.live_release() == live
    good = signed_commit(site, alice, "alice")
    res = box.watcher("--once", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert settled(site, good) == good


def test_highest_semver_tag_is_deployed(box: Box) -> None:
    """`tag_pattern = "v*"`: v1.10.0 is deployed over v1.9.0 and over a newer branch head, a
    pre-release only with `prereleases`; status and the report name the tag; a check with
    nothing new fetches nothing."""
    site = box.site
    env = {"WATCHER_GIT_TAG_PATTERN": "v*"}
    old = code_change(site, "tag-1.9")
    git("tag", "v1.9.0", cwd=site.work)
    new = code_change(site, "tag-1.10")
    git("tag", "-a", "-m", "release", "v1.10.0", cwd=site.work)
    rc = code_change(site, "tag-2.0rc")
    git("tag", "v2.0.0-rc.1", cwd=site.work)
    code_change(site, "untagged head")
    git("push", "-q", "origin", "--tags", cwd=site.work)
    res = box.watcher("--once", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert settled(site, new) == new and old != new
    status = json.loads(box.watcher("status", "--json", env=env).stdout)
    assert status["live"]["tag"] == "v1.10.0"
    assert box.reports()[-1]["tag"] == "v1.10.0"
    fetch_head = site.root / "repo" / "FETCH_HEAD"
    before = fetch_head.stat().st_mtime_ns
    res = box.watcher("--once", env=env)
    assert res.returncode == 0 and "unchanged" in res.stdout
    assert fetch_head.stat().st_mtime_ns == before
    assert "step.start" not in {e.get("event") for e in log_events(res.stderr)}
    res = box.watcher("--once", env={**env, "WATCHER_GIT_PRERELEASES": "true"})
    assert res.returncode == 0 and settled(site, rc) == rc


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_window_holds_then_the_daemon_deploys_when_it_opens(box: Box) -> None:
    """With a Monday 09:00-10:00 window and the clock at 08:00, a new head waits (status
    says until 09:00) and the daemon's next check is due at the opening, not a poll later;
    with the clock at 09:00 the same daemon deploys it."""
    site = box.site
    cfg = load(site.config, environ={"WATCHER_SCHEDULE_WINDOWS": '["mon 09:00-10:00"]',
                                     "WATCHER_GIT_INTERVAL": "2h",
                                     "WATCHER_WEBHOOK_LISTEN": f"127.0.0.1:{free_port()}"})
    clock = FakeClock(datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc))  # a Monday
    daemon = Daemon(cfg, clock=clock)
    live = site.live_release()
    sha = code_change(site, "window")
    delay = daemon.tick()
    assert site.live_release() == live
    check = box.last_check()
    assert (check["result"], check["remote_sha"], check["hold"]) == ("waiting", sha,
                                                                    "outside_window")
    assert check["until"] == "2026-11-30T09:00:00Z"
    assert 3000 < delay < 4000  # the opening (jittered), not the 2 h poll
    clock.now += timedelta(hours=1)
    daemon.tick()
    assert settled(site, sha) == sha
    assert box.reports()[-1]["trigger"] == "poll"


def test_once_outside_every_window_waits_and_exits_0(box: Box) -> None:
    """`watcher --once` (cron's way) outside `schedule.windows` deploys nothing and exits 0,
    recording the head as waiting for the window; run without the window, it deploys."""
    site = box.site
    later = DAYS[(datetime.now(timezone.utc).weekday() + 3) % 7]  # never today nor tomorrow
    live = site.live_release()
    sha = code_change(site, "outside the window")
    res = box.watcher("--once", env={"WATCHER_SCHEDULE_WINDOWS": f'["{later} 00:00-00:01"]'})
    assert res.returncode == 0, res.stderr[-3000:]
    assert site.live_release() == live
    check = box.last_check()
    assert (check["result"], check["remote_sha"], check["hold"]) == ("waiting", sha,
                                                                    "outside_window")
    assert check["until"].endswith("T00:00:00Z")
    res = box.watcher("--once")
    assert res.returncode == 0, res.stderr[-3000:]
    assert settled(site, sha) == sha
