"""End-to-end: the operator's commands (status, history, rollback, deploy REV) on a real Site.

The tests share one sandbox and run in file order, like one operator's session: three
deploys, a look at status and history (also while the lock is held), rollbacks by hand and
the refusals, then `watcher deploy REV` with every kind of REV. Every deploy after the first
changes code only (HUP, one shared venv). Runtime: about 60-90 s on two cores (one venv
build dominates).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.fixtures import run_cli
from support.site import Site, git, log_events, settled, tail

from watcher.parts import lock

pytestmark = pytest.mark.slow


@dataclass
class Session:
    """The shared sandbox and what the tests pass on: releases and shas, in deploy order."""

    site: Site
    releases: list[str] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)

    def deploy_head(self) -> None:
        """`--once` that must deploy the remote head."""
        sha = self.site.head()
        res = self.site.watcher("--once", timeout=180)
        assert res.returncode == 0, tail(res)
        assert settled(self.site, sha) == sha
        self.releases.append(self.site.live_release())
        self.shas.append(sha)

    def release_of(self, sha: str) -> str:
        return self.releases[self.shas.index(sha)]


@pytest.fixture(scope="module")
def session(site_factory: Callable[..., Site]) -> Session:
    return Session(site_factory(keep_releases=3, health_timeout="6s"))


def events(res: subprocess.CompletedProcess[str]) -> list[str]:
    return [str(e.get("event")) for e in log_events(res.stderr)]


def as_json(res: subprocess.CompletedProcess[str]) -> object:
    assert res.returncode == 0, tail(res)
    return json.loads(res.stdout)




def push_marker(site: Site, text: str) -> str:
    """A code-only commit (a file nothing reads): deploys by HUP with the same venv."""
    return site.commit({"pages/marker.txt": text + "\n"}, f"Marker {text}")


# -- before anything is deployed -------------------------------------------------------------
def test_status_and_history_before_the_first_deploy(session: Session) -> None:
    """On a fresh root, `status --json` shows nothing live, no outcome and a free lock, and
    `history` is empty (exit 0 both)."""
    site = session.site
    status = as_json(site.watcher("status", "--json"))
    assert isinstance(status, dict)
    assert (status["live"], status["last_outcome"], status["lock_holder"]) == (None, None, None)
    assert status["app"] == "mysite"
    assert as_json(site.watcher("history", "--json")) == []
    text = site.watcher("history")
    assert text.returncode == 0 and "no deploys yet" in text.stderr
    nothing = site.watcher("rollback")
    assert nothing.returncode == 2, tail(nothing)
    assert "nothing to roll back" in nothing.stderr


def test_three_deploys(session: Session) -> None:
    """The first deploy builds the venv; two code-only deploys follow (the set-up for the
    rest of the file)."""
    session.deploy_head()
    for text in ("B", "C"):
        push_marker(session.site, text)
        session.deploy_head()
    assert len(set(session.releases)) == 3


# -- status ------------------------------------------------------------------------------------
def test_status_shows_live_release_last_check_and_outcome(session: Session) -> None:
    """`status --json` and the text form name the live release and sha, the last check and
    the last outcome, and a free lock."""
    site = session.site
    status = as_json(site.watcher("status", "--json"))
    assert isinstance(status, dict)
    assert status["live"]["release"] == session.releases[-1] == site.live_release()
    assert status["live"]["sha"] == session.shas[-1]
    assert status["last_check"]["result"] == "deployed"
    assert status["last_check"]["remote_sha"] == session.shas[-1]
    assert status["last_outcome"]["outcome"] == "succeeded"
    assert status["last_outcome"]["event"] == "deploy"
    assert status["last_outcome"]["release"] == session.releases[-1]
    assert status["lock_holder"] is None
    text = site.watcher("status")
    assert text.returncode == 0, tail(text)
    live = session.releases[-1]
    assert f"live:         {live} ({session.shas[-1][:12]})" in text.stdout
    assert "last outcome: succeeded deploy" in text.stdout
    assert "lock:         free" in text.stdout


def test_status_names_the_lock_holder_and_deploys_wait_for_it(session: Session) -> None:
    """While another process holds `.watcher/lock`, status shows its pid, and `deploy` and
    `rollback` give up with exit 3 naming that pid, changing nothing."""
    site = session.site
    live = site.live_release()
    with lock.acquire(site.root / ".watcher" / "lock"):
        status = as_json(site.watcher("status", "--json"))
        assert isinstance(status, dict)
        assert status["lock_holder"] == os.getpid()
        text = site.watcher("status")
        assert f"lock:         held by pid {os.getpid()}" in text.stdout
        for argv in (("deploy", "main"), ("rollback",), ("--once",)):
            res = site.watcher(*argv)
            assert res.returncode == 3, tail(res)
            assert f"pid {os.getpid()}" in res.stderr
    assert site.live_release() == live
    after = as_json(site.watcher("status", "--json"))
    assert isinstance(after, dict) and after["lock_holder"] is None


# -- history -----------------------------------------------------------------------------------
def test_history_json_is_oldest_first_and_text_newest_first(session: Session) -> None:
    """`history -n 2 --json` holds the last two deploys oldest first (as in state.json), with
    step timings; the text form lists the same two newest first; -n 0 is a usage error."""
    site = session.site
    entries = as_json(site.watcher("history", "-n", "2", "--json"))
    assert isinstance(entries, list)
    assert [e["to_sha"] for e in entries] == session.shas[1:3]
    assert [e["release"] for e in entries] == session.releases[1:3]
    assert all(e["outcome"] == "succeeded" and e["event"] == "deploy" for e in entries)
    for entry in entries:
        steps = {s["name"]: s for s in entry["steps"]}
        assert {"fetch", "export", "check", "switch", "reload", "health"} <= set(steps)
        assert all(isinstance(s["duration_s"], float) and s["duration_s"] >= 0
                   for s in steps.values())
    assert len(as_json(site.watcher("history", "--json"))) == 3  # type: ignore[arg-type]
    text = site.watcher("history", "-n", "2")
    assert text.returncode == 0, tail(text)
    lines = text.stdout.splitlines()
    assert len(lines) == 2
    assert session.shas[2][:12] in lines[0] and session.shas[1][:12] in lines[1]
    assert "health=" in lines[0] and "succeeded" in lines[0]
    bad = site.watcher("history", "-n", "0")
    assert bad.returncode == 2 and "-n must be at least 1" in bad.stderr


# -- rollback ----------------------------------------------------------------------------------
def test_rollback_with_supervisord_unreachable_switches_nothing(session: Session) -> None:
    """With supervisord not answering, `watcher rollback` exits 3 before it touches `current`
    or marks anything bad."""
    site = session.site
    live, before = site.live_release(), site.config.read_text()
    site.config.write_text(before.replace(site.sv.url, "unix:///nonexistent/supervisor.sock"))
    try:
        res = site.watcher("rollback")
    finally:
        site.config.write_text(before)
    assert res.returncode == 3, tail(res)
    assert site.live_release() == live == site.state()["live"]
    assert site.state()["bad"] == {}


def test_rollback_goes_to_the_previous_release_and_marks_the_commit_bad(session: Session) -> None:
    """`watcher rollback` switches to the previous release, reloads (HUP: same venv) and
    health-checks it; the previous sha is served, the one left is marked bad, and the report
    and history say `rollback succeeded`."""
    site = session.site
    b_sha, c_sha = session.shas[1], session.shas[2]
    pid = site.master_pid()
    res = site.watcher("rollback")
    assert res.returncode == 0, tail(res)
    assert f"rolled back to {session.releases[1]}" in res.stdout
    assert settled(site, b_sha) == b_sha
    assert site.live_release() == session.releases[1] == site.state()["live"]
    assert site.master_pid() == pid
    state = site.state()
    assert state["bad"][c_sha]["step"] == "rollback"
    assert state["releases"][session.releases[2]]["ok"] is False
    report = site.api.requests[-1].json
    assert (report["event"], report["outcome"], report["from_sha"], report["to_sha"]) == (
        "rollback", "succeeded", c_sha, b_sha)
    assert [(s["name"], s["outcome"]) for s in report["steps"]] == [
        ("switch", "ok"), ("reload", "ok"), ("health", "ok")]
    last = as_json(site.watcher("history", "-n", "1", "--json"))
    assert isinstance(last, list)
    assert (last[0]["event"], last[0]["release"]) == ("rollback", session.releases[1])
    status = as_json(site.watcher("status", "--json"))
    assert isinstance(status, dict)
    assert c_sha in status["bad_commits"]
    assert status["live"]["sha"] == b_sha


def test_the_daemon_check_does_not_undo_a_rollback(session: Session) -> None:
    """With the branch still at the commit rolled away from, `--once` refuses it (exit 1,
    known_bad) and deploys nothing; status shows that check."""
    site = session.site
    reports = len(site.api.requests)
    res = site.watcher("--once")
    assert res.returncode == 1, tail(res)
    assert "check.known_bad" in events(res)
    assert "deploy.start" not in events(res)
    assert "known_bad" in res.stdout and "watcher deploy" in res.stdout
    assert site.live_release() == session.releases[1]
    assert settled(site, session.shas[1]) == session.shas[1]
    assert len(site.api.requests) == reports
    status = as_json(site.watcher("status", "--json"))
    assert isinstance(status, dict)
    assert status["last_check"]["result"] == "known_bad"


def test_rollback_to_a_named_release(session: Session) -> None:
    """`watcher rollback RELEASE` goes to that release, not merely the previous one, even to
    one rolled away from before (named by hand, it is trusted again: its mark is cleared)."""
    site = session.site
    first, third = session.releases[0], session.releases[2]
    b_sha, c_sha = session.shas[1], session.shas[2]
    res = site.watcher("rollback", third)
    assert res.returncode == 0, tail(res)
    assert settled(site, c_sha) == c_sha
    state = site.state()
    assert (state["live"], state["releases"][third]["ok"]) == (third, True)
    assert c_sha not in state["bad"] and b_sha in state["bad"]
    res = site.watcher("rollback", first)
    assert res.returncode == 0, tail(res)
    assert settled(site, session.shas[0]) == session.shas[0]
    assert site.live_release() == first == site.state()["live"]
    assert c_sha in site.state()["bad"]


def test_rollback_refuses_what_it_cannot_do(session: Session) -> None:
    """Rolling back to the live release, an unknown name or a deleted release dir, or with no
    older release left, is refused with exit 2 and a clear message; nothing changes."""
    site = session.site
    live = site.live_release()
    cases = {
        live: "is already live",
        "20000101T000000Z-0123456789ab": "unknown release",
        "../../etc": "unknown release",
    }
    gone = session.releases[1]
    shutil.rmtree(site.root / "releases" / gone)
    cases[gone] = "is gone"
    for name, message in cases.items():
        res = site.watcher("rollback", name)
        assert res.returncode == 2, tail(res)
        assert message in res.stderr, tail(res)
        assert "Traceback" not in res.stderr
    res = site.watcher("rollback")  # the first release is live: nothing older on disk
    assert res.returncode == 2, tail(res)
    assert "no previous release" in res.stderr
    assert site.live_release() == live
    assert settled(site, session.shas[0]) == session.shas[0]


def test_a_new_commit_after_a_rollback_deploys(session: Session) -> None:
    """Once the branch moves past the commit rolled away from, `--once` deploys again."""
    push_marker(session.site, "D")
    session.deploy_head()
    assert session.site.state()["live"] == session.releases[-1]


# -- deploy REV --------------------------------------------------------------------------------
def test_deploy_a_tag(session: Session) -> None:
    """`watcher deploy TAG` deploys the commit a tag pushed to the remote points at."""
    site = session.site
    a_sha = session.shas[0]
    git("tag", "-a", "-m", "first", "v1.0", a_sha, cwd=site.work)
    git("push", "-q", "origin", "v1.0", cwd=site.work)
    res = site.watcher("deploy", "v1.0")
    assert res.returncode == 0, tail(res)
    assert settled(site, a_sha) == a_sha
    assert site.state()["releases"][site.live_release()]["sha"] == a_sha
    # The branch head is held back, so the next check does not undo the operator's choice.
    again = site.watcher("--once")
    assert again.returncode == 1, tail(again)
    assert "check.known_bad" in events(again)
    assert site.served_revision() == a_sha


def test_deploy_the_branch_by_name(session: Session) -> None:
    """`watcher deploy main` deploys the branch head; again, it is `already live` (exit 0)."""
    site = session.site
    head = site.head()
    res = site.watcher("deploy", "main")
    assert res.returncode == 0, tail(res)
    assert settled(site, head) == head
    again = site.watcher("deploy", "main")
    assert again.returncode == 0, tail(again)
    assert "already live" in again.stdout
    assert "deploy.start" not in events(again)


def test_deploy_a_known_bad_commit_by_full_sha_forces_it(session: Session) -> None:
    """`watcher deploy SHA` of a commit marked bad (rolled away from by hand) deploys it and
    clears the mark."""
    site = session.site
    c_sha = session.shas[2]
    assert c_sha in site.state()["bad"]
    res = site.watcher("deploy", c_sha)
    assert res.returncode == 0, tail(res)
    assert "deploy.start" in events(res)
    assert settled(site, c_sha) == c_sha
    assert c_sha not in site.state()["bad"]
    assert site.api.requests[-1].json["outcome"] == "succeeded"


def test_deploy_a_short_sha(session: Session) -> None:
    """`watcher deploy` takes an abbreviated sha (here 8 hex digits, of a bad-marked commit)."""
    site = session.site
    b_sha = session.shas[1]
    res = site.watcher("deploy", b_sha[:8])
    assert res.returncode == 0, tail(res)
    assert settled(site, b_sha) == b_sha
    assert site.state()["releases"][site.live_release()]["sha"] == b_sha


def test_deploy_an_unknown_rev_is_a_usage_error(session: Session) -> None:
    """An unknown branch, tag or sha is refused with exit 2 and a message naming it;
    nothing is built or reported."""
    site = session.site
    live, reports, names = site.live_release(), len(site.api.requests), site.releases()
    for rev in ("no-such-branch", "deadbeef" * 5, "v9.9"):
        res = site.watcher("deploy", rev)
        assert res.returncode == 2, tail(res)
        assert f"no commit named {rev!r}" in res.stderr, tail(res)
        assert "Traceback" not in res.stderr
    assert (site.live_release(), site.releases()) == (live, names)
    assert len(site.api.requests) == reports


def test_a_pruned_release_cannot_be_rolled_back_to(session: Session) -> None:
    """After the deploys above pruned the first release, naming it is refused (exit 2)."""
    site = session.site
    first = session.releases[0]
    assert first not in site.releases()
    res = site.watcher("rollback", first)
    assert res.returncode == 2, tail(res)
    assert f"release {first} is gone" in res.stderr, tail(res)


def bare_config(tmp_path: Path) -> tuple[Path, Path]:
    """A minimal valid config for commands that need no remote or supervisord: (config, root)."""
    root = tmp_path / "app"
    (root / ".watcher").mkdir(parents=True)
    config = tmp_path / "watcher.toml"
    config.write_text(f'[app]\nname = "x"\nroot = "{root}"\n\n'
                      f'[git]\nremote = "{tmp_path / "none.git"}"\n\n'
                      '[supervisor]\nprograms = ["x"]\n')
    return config, root


def test_an_unreadable_state_file_is_not_taken_for_corrupt(tmp_path: Path) -> None:
    """A state.json that cannot be read (here a directory: EISDIR, as EACCES or EIO would be)
    makes status and a check fail with exit 3 naming it, and is not moved aside."""
    config, root = bare_config(tmp_path)
    (root / ".watcher" / "state.json").mkdir()
    for argv in (("status", "--json"), ("--once",)):
        res = run_cli(*argv, "--config", str(config))
        assert res.returncode == 3, tail(res)
        assert f"cannot read {root / '.watcher' / 'state.json'}" in res.stderr, tail(res)
    left = sorted(p.name for p in (root / ".watcher").iterdir())
    assert left == ["children", "lock", "state.json"]


def test_a_state_file_that_is_not_ours_is_set_aside(tmp_path: Path) -> None:
    """A state.json that is JSON but not watcher's document is kept aside as corrupt, like
    unparsable text, and status shows an empty state instead of crashing."""
    config, root = bare_config(tmp_path)
    for n, text in enumerate(('["not", "a", "state"]', '{"releases": {"r1": {"nme": "r1"}}}')):
        (root / ".watcher" / "state.json").write_text(text)
        res = run_cli("status", "--json", "--config", str(config))
        status = as_json(res)
        assert isinstance(status, dict) and status["live"] is None
        assert "state.corrupt" in [e.get("event") for e in log_events(res.stderr)]
        aside = sorted((root / ".watcher").glob("state.corrupt-*"))
        assert aside and aside[-1].read_text() == text
        if n == 0:
            aside[-1].rename(aside[-1].with_name("kept-0"))  # same second, same name
