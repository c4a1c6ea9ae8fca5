"""End-to-end: the core deploy against real git, supervisord, Gunicorn and a logging API.

The tests share one sandbox (`Day`) and run in file order, like one operator's day: each
leaves the site healthy for the next (a broken commit is always followed by a fixing one),
and each records the facts the later ones check (pruning, status, the token canary).
Runtime: about a minute on two cores (two venv builds of ~8 s dominate).
"""

from __future__ import annotations

import calendar
import json
import os
import re
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import run_cli
from support.site import (
    TOKEN,
    Site,
    git,
    leftovers,
    log_events,
    settled,
    spare_ready,
    tail,
    trash_emptied,
)

import watcher

pytestmark = pytest.mark.slow

RELEASE_RE = r"\d{8}T\d{6}Z-[0-9a-f]{12}"
REPORT_FIELDS = {
    "id", "app", "host", "event", "outcome", "from_sha", "to_sha", "release", "started_at",
    "finished_at", "duration_s", "steps", "error", "commits", "migrations_applied",
    "watcher_version", "trigger", "actor", "warnings", "migrations_reversed", "tag",
}
HEALTHZ_LINE = (
    'return HttpResponse(f"ok {revision()}\\n", content_type="text/plain; charset=utf-8")'
)
FAILING_MIGRATION = '''\
from django.db import migrations


def explode(apps, schema_editor):
    raise RuntimeError("migration 0002 exploded on purpose")


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]
    operations = [migrations.RunPython(explode, migrations.RunPython.noop)]
'''


@dataclass
class Day:
    """The shared sandbox, every watcher run made against it, and facts tests pass on."""

    site: Site
    runs: list[subprocess.CompletedProcess[str]] = field(default_factory=list)
    deployed: list[str] = field(default_factory=list)  # releases that went live, in order
    bad: list[str] = field(default_factory=list)  # shas that failed
    seen: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def watcher(self, *args: str, label: str = "") -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        res = self.site.watcher(*args, timeout=180)
        took = time.monotonic() - started
        self.runs.append(res)
        if label:
            self.timings[label] = took
            print(f"\n{label}: {took:.2f} s (watcher subprocess wall time)")
        return res

    def deploy(self, label: str = "") -> subprocess.CompletedProcess[str]:
        """`--once` that must deploy the remote head; checks pruning after it."""
        sha = self.site.head()
        res = self.watcher("--once", label=label)
        assert res.returncode == 0, tail(res)
        assert settled(self.site, sha) == sha
        self.deployed.append(self.site.live_release())
        assert len(self.site.releases()) <= 3
        return res


@pytest.fixture(scope="module")
def sandbox(site_factory: Callable[..., Site]) -> Day:
    site = site_factory(health_timeout="6s")
    return Day(site, seen={"views": site.read("pages/views.py")})


@pytest.fixture
def day(sandbox: Day, request: pytest.FixtureRequest) -> Day:
    """The shared day; a test picked alone (`-k`) still finds a release live."""
    if not sandbox.deployed and request.node.name != "test_first_deploy_starts_the_program":
        sandbox.deploy()
    return sandbox


def events(res: subprocess.CompletedProcess[str]) -> list[str]:
    return [str(e.get("event")) for e in log_events(res.stderr)]


def plan_of(res: subprocess.CompletedProcess[str]) -> list[str]:
    plans = [e["steps"] for e in log_events(res.stderr) if e.get("event") == "deploy.plan"]
    assert len(plans) == 1, tail(res)
    return list(plans[0])




def last_report(site: Site) -> dict[str, Any]:
    doc: dict[str, Any] = site.api.requests[-1].json
    return doc


def venv_of(site: Site, release: str) -> str:
    return Path(os.readlink(site.root / "releases" / release / ".venv")).name


def tree_snapshot(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in path.rglob("*")}


# -- 1. first deploy ----------------------------------------------------------------------
def test_first_deploy_starts_the_program(day: Day) -> None:
    """A first `--once` exports a release, builds its venv, switches `current` and starts
    Gunicorn, which then serves the pushed sha."""
    site = day.site
    sha = site.head()
    day.deploy(label="first deploy (venv build, start)")
    assert site.sv.rpc().getProcessInfo("mysite")["statename"] == "RUNNING"
    link = os.readlink(site.root / "current")
    assert re.fullmatch(rf"releases/\d{{8}}T\d{{6}}Z-{sha[:12]}", link)
    stamp = calendar.timegm(time.strptime(link.split("/")[1][:16], "%Y%m%dT%H%M%SZ"))
    assert abs(stamp - time.time()) < 600  # a UTC stamp, not local time
    release = site.root / link
    assert (release / "REVISION").read_text().strip() == sha
    assert not (release / ".git").exists()
    venv_link = os.readlink(release / ".venv")
    assert re.fullmatch(r"\.\./\.\./venvs/[0-9a-f]{16}", venv_link)
    assert (release / ".venv" / "bin" / "gunicorn").is_file()
    assert (release / "data").is_symlink()  # build.shared = ["data"]
    state_json = site.root / ".watcher" / "state.json"
    assert stat.S_IMODE(state_json.stat().st_mode) == 0o600
    assert site.state()["live"] == release.name
    day.seen["first_venv"] = Path(venv_link).name


def test_report_carries_every_design_field(day: Day) -> None:
    """The logging API receives one report per deploy with every field of DESIGN §7 and the
    token only as a Bearer header."""
    site = day.site
    assert len(site.api.requests) == 1
    req = site.api.requests[0]
    assert req.method == "POST"
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    doc = req.json
    assert set(doc) == REPORT_FIELDS
    assert re.fullmatch(r"[0-9a-f]{32}", doc["id"])
    assert (doc["app"], doc["host"], doc["event"], doc["outcome"]) == (
        "mysite", socket.gethostname(), "deploy", "succeeded")
    assert doc["from_sha"] is None
    assert doc["to_sha"] == site.head()
    assert doc["release"] == site.live_release()
    started = doc["started_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", started)
    assert doc["finished_at"] >= started
    assert 0 < doc["duration_s"] < 300
    assert all(set(s) == {"name", "outcome", "duration_s"} for s in doc["steps"])
    names = [s["name"] for s in doc["steps"]]
    for step in ("fetch", "export", "venv", "check", "migrate", "collectstatic", "switch",
                 "reload", "health"):
        assert step in names
    assert "prune" not in names  # it runs after the report is sent (issue 12)
    assert {s["outcome"] for s in doc["steps"]} == {"ok"}
    assert doc["error"] is None
    assert doc["commits"] == [{"sha": site.head(), "author": "Dev",
                               "subject": "Initial import of the example site"}]
    assert doc["migrations_applied"] == ["pages.0001_initial"]
    assert doc["watcher_version"] == watcher.__version__


# -- 4. no-op check -----------------------------------------------------------------------
def test_noop_check_fetches_nothing(day: Day) -> None:
    """A check with the branch where it was makes no release, fetches nothing, sends no
    report and exits 0."""
    site = day.site
    repo = site.root / "repo"
    before = tree_snapshot(repo)
    objects = git("count-objects", "-v", cwd=repo)
    releases, reports = site.releases(), len(site.api.requests)
    res = day.watcher("--once")
    assert res.returncode == 0, tail(res)
    assert "check.unchanged" in events(res)
    assert "deploy.start" not in events(res)
    assert tree_snapshot(repo) == before
    assert git("count-objects", "-v", cwd=repo) == objects
    assert site.releases() == releases
    assert len(site.api.requests) == reports


# -- 2. code-only change ------------------------------------------------------------------
def test_code_only_change_reloads_rolling(day: Day) -> None:
    """A template change keeps the master pid (a rolling reload: new workers before the old
    ones retire), serves the new code, links unchanged files from the live release (through
    the spare linked from it after the last deploy) and carries the collected static files
    over as hard links. Its gate runs in the warm gate the last deploy left waiting."""
    site = day.site
    old, pid = site.live_release(), site.master_pid()
    assert spare_ready(site.root, old)  # built by a detached child after the last deploy
    page = "pages/templates/pages/index.html"
    site.commit({page: site.read(page).replace("<h1>mysite</h1>", "<h1>mysite v2</h1>")},
                "Say v2 on the front page")
    res = day.deploy(label="code-only deploy (rolling)")
    new = site.live_release()
    assert new != old
    assert site.master_pid() == pid
    assert "reload.rolling" in events(res) and "supervisor.hup" not in events(res)
    assert "gate.warm" in events(res) and "gate.cold" not in events(res)
    assert {"export:link", "venv:reuse", "collectstatic:carry", "reload:rolling"} <= set(
        plan_of(res))
    linked = [e for e in log_events(res.stderr) if e.get("event") == "export.linked"]
    assert [(e.get("spare"), e["written"]) for e in linked] == [(True, 1)], linked
    view = Path("pages/views.py")
    assert ((site.root / "releases" / new / view).stat().st_ino
            == (site.root / "releases" / old / view).stat().st_ino)
    status, body = site.get("/")
    assert status == 200 and "mysite v2" in body
    css = Path("staticfiles/pages/site.css")
    old_css, new_css = (site.root / "releases" / r / css for r in (old, new))
    assert new_css.stat().st_ino == old_css.stat().st_ino
    assert venv_of(site, new) == venv_of(site, old)


def test_static_change_collects_static_again(day: Day) -> None:
    """A changed static file is collected afresh (no hard link to the old copy) and the
    program is still only reloaded in place."""
    site = day.site
    old, pid = site.live_release(), site.master_pid()
    css = "pages/static/pages/site.css"
    site.commit({css: site.read(css) + "\nfooter { color: #555; }\n"}, "Style the footer")
    res = day.deploy()
    new = site.live_release()
    assert {"collectstatic:run", "reload:rolling"} <= set(plan_of(res))
    collected = Path("staticfiles") / "pages" / "site.css"
    new_css = site.root / "releases" / new / collected
    assert "footer { color: #555; }" in new_css.read_text()
    assert new_css.stat().st_ino != (site.root / "releases" / old / collected).stat().st_ino
    assert site.master_pid() == pid


# -- 3. requirements change ---------------------------------------------------------------
def test_requirements_change_builds_a_venv_and_restarts(day: Day) -> None:
    """A requirements change builds a new venvs/<hash> and restarts the program (new pid);
    the warm gate waiting for the old venv is not used: the gate boots cold."""
    site = day.site
    old, pid = site.live_release(), site.master_pid()
    site.commit({"requirements.txt": site.read("requirements.txt") + "# reviewed\n"},
                "Note in requirements.txt")
    res = day.deploy(label="requirements deploy (venv build, restart)")
    new = site.live_release()
    assert site.master_pid() != pid
    assert "gate.cold" in events(res) and "gate.warm" not in events(res)
    assert {"venv:build", "reload:restart", "collectstatic:run"} <= set(plan_of(res))
    old_venv, new_venv = venv_of(site, old), venv_of(site, new)
    assert new_venv != old_venv
    assert (site.root / "venvs" / new_venv / ".complete").is_file()
    assert (site.root / "venvs" / old_venv).is_dir()  # the previous release still uses it


# -- 5. import error ----------------------------------------------------------------------
def test_import_error_stops_before_the_switch(day: Day) -> None:
    """A commit whose code does not import fails at `check`: exit 1, nothing reloaded, the
    old revision served, its release dir removed, outcome `failed` everywhere."""
    site = day.site
    live, live_sha, pid = site.live_release(), site.head(), site.master_pid()
    releases = site.releases()
    views = day.seen["views"]
    bad = site.commit({"pages/views.py": "import watcher_test_no_such_module\n" + views},
                      "Break an import")
    day.bad.append(bad)
    res = day.watcher("--once", label="failed deploy (check)")
    assert res.returncode == 1, tail(res)
    assert "gate.warm" in events(res)  # the error comes through the warm gate as cold
    assert site.served_revision() == live_sha
    assert (site.live_release(), site.master_pid()) == (live, pid)
    assert site.releases() == releases
    assert not [p for p in (site.root / "releases").iterdir() if bad[:12] in p.name]
    report = last_report(site)
    assert (report["outcome"], report["to_sha"]) == ("failed", bad)
    assert report["error"]["step"] == "check"
    assert "watcher_test_no_such_module" in report["error"]["output_tail"]
    hist = day.watcher("history", "-n", "1", "--json")
    assert hist.returncode == 0, tail(hist)
    [entry] = json.loads(hist.stdout)
    assert (entry["outcome"], entry["to_sha"], entry["error"]["step"]) == ("failed", bad, "check")


# -- 8. a bad commit is not retried -------------------------------------------------------
def test_bad_commit_is_not_retried_until_the_branch_moves(day: Day) -> None:
    """The failed head is skipped by the next check (exit 1, no release, no report);
    `watcher deploy SHA` forces it (and it fails the same way); a fix on top deploys."""
    site = day.site
    bad, live_sha = day.bad[-1], site.state()["releases"][site.live_release()]["sha"]
    releases, reports = site.releases(), len(site.api.requests)
    res = day.watcher("--once")
    assert res.returncode == 1, tail(res)
    assert "check.known_bad" in events(res)
    assert "deploy.start" not in events(res)
    assert site.releases() == releases
    assert len(site.api.requests) == reports
    forced = day.watcher("deploy", bad[:12])
    assert forced.returncode == 1, tail(forced)
    assert "deploy.start" in events(forced)
    report = last_report(site)
    assert (report["outcome"], report["to_sha"], report["error"]["step"]) == (
        "failed", bad, "check")
    assert site.served_revision() == live_sha
    assert site.releases() == releases
    site.commit({"pages/views.py": day.seen["views"]}, "Fix the import")
    day.deploy()


# -- 6. failing migration -----------------------------------------------------------------
def test_failing_migration_keeps_the_old_release(day: Day) -> None:
    """A migration that raises fails the deploy before the switch: exit 1, the old revision
    served, nothing reported as applied; dropping the migration deploys again."""
    site = day.site
    live, live_sha = site.live_release(), site.head()
    migration = "pages/migrations/0002_explode.py"
    bad = site.commit({migration: FAILING_MIGRATION}, "Add a migration that fails")
    day.bad.append(bad)
    res = day.watcher("--once")
    assert res.returncode == 1, tail(res)
    assert site.served_revision() == live_sha
    assert site.live_release() == live
    report = last_report(site)
    assert (report["outcome"], report["error"]["step"]) == ("failed", "migrate")
    assert "exploded on purpose" in report["error"]["output_tail"]
    assert report["migrations_applied"] == []
    assert site.get("/visits")[0] == 200  # the shared database is intact
    site.commit({migration: None}, "Drop the failing migration")
    day.deploy()


# -- 7. health failure after the switch ---------------------------------------------------
def test_health_failure_rolls_back(day: Day) -> None:
    """A release whose /healthz answers 500 under Gunicorn is rolled back by itself: exit 1,
    the previous release live and served again, outcome `rolled_back` with the rollback
    steps."""
    site = day.site
    live, live_sha, pid = site.live_release(), site.head(), site.master_pid()
    views = day.seen["views"]
    assert views.count(HEALTHZ_LINE) == 1
    # 500 only when Gunicorn serves it: the smoke requests (Django's test client) pass.
    broken = views.replace(HEALTHZ_LINE, (
        'if request.META.get("SERVER_SOFTWARE", "").startswith("gunicorn"):\n'
        '        return HttpResponse("broken\\n", status=500)\n    ') + HEALTHZ_LINE)
    bad = site.commit({"pages/views.py": broken}, "Health answers 500")
    day.bad.append(bad)
    res = day.watcher("--once", label="health failure and rollback")
    assert res.returncode == 1, tail(res)
    assert settled(site, live_sha) == live_sha
    assert site.live_release() == live
    assert site.state()["live"] == live
    assert site.master_pid() == pid  # HUP there and back
    report = last_report(site)
    assert (report["outcome"], report["to_sha"], report["release"]) == (
        "rolled_back", bad, live)
    assert report["from_sha"] == live_sha
    assert [c["subject"] for c in report["commits"]] == ["Health answers 500"]
    assert report["error"]["step"] == "health"
    steps = {s["name"]: s["outcome"] for s in report["steps"]}
    assert steps["health"] in ("failed", "timeout")
    for name in ("rollback_switch", "rollback_reload", "rollback_health"):
        assert steps.get(name) == "ok", report["steps"]
    assert not [n for n in site.releases() if bad[:12] in n]
    again = day.watcher("--once")
    assert again.returncode == 1 and "check.known_bad" in events(again), tail(again)
    site.commit({"pages/views.py": views}, "Health answers 200 again")
    day.deploy()


# -- 9. pruning ---------------------------------------------------------------------------
def test_pruning_keeps_live_previous_and_used_venvs_only(day: Day) -> None:
    """After many deploys with keep_releases = 3 there are at most 3 releases, the live and
    the previous among them, and no venv that no release uses."""
    site = day.site
    assert len(day.deployed) >= 5
    names = site.releases()
    assert len(names) <= 3
    assert all(re.fullmatch(RELEASE_RE, n) for n in names)
    assert day.deployed[-1] == site.live_release() == site.state()["live"]
    assert day.deployed[-2] in names  # the previous one, the rollback target
    assert day.deployed[0] not in names
    used = {venv_of(site, n) for n in names}
    # pruned venvs are renamed to `.trash-*` and deleted by a child that outlives `--once`
    assert trash_emptied(site.root), leftovers(site.root)
    assert set(os.listdir(site.root / "venvs")) == used
    assert day.seen["first_venv"] not in used
    assert set(site.state()["releases"]) <= set(names)


# -- 14. status and history ---------------------------------------------------------------
def test_status_and_history_show_the_live_release_and_last_outcomes(day: Day) -> None:
    """`status --json` names the live release and last outcome; `history -n 2 --json` holds
    the last two deploys, oldest first, with step timings."""
    site = day.site
    res = day.watcher("status", "--json")
    assert res.returncode == 0, tail(res)
    status = json.loads(res.stdout)
    assert status["live"]["release"] == site.live_release()
    assert status["live"]["sha"] == site.head()
    assert status["live"]["venv"] == venv_of(site, site.live_release())
    assert status["last_outcome"]["outcome"] == "succeeded"
    assert status["last_check"]["result"] == "deployed"
    assert status["lock_holder"] is None
    assert set(day.bad) <= set(status["bad_commits"])
    res = day.watcher("history", "-n", "2", "--json")
    assert res.returncode == 0, tail(res)
    entries = json.loads(res.stdout)
    assert [e["outcome"] for e in entries] == ["rolled_back", "succeeded"]
    assert entries[0]["to_sha"] == day.bad[-1]
    assert entries[1]["release"] == site.live_release()
    assert all(set(s) == {"name", "outcome", "duration_s"} for s in entries[1]["steps"])
    text = day.watcher("status")
    assert f"live:         {site.live_release()}" in text.stdout
    lines = day.watcher("history", "-n", "3").stdout.splitlines()
    assert len(lines) == 3 and "succeeded" in lines[0] and "rolled_back" in lines[1]


# -- 13. watcher check --------------------------------------------------------------------
def test_check_reaches_every_part_and_warns_about_chdir(day: Day) -> None:
    """`watcher check` reports the remote, supervisord, the program and the installer; it
    warns when a program's command does not `--chdir` into `<root>/current`, and says the
    trade of a setup without [bluegreen] (a venv change restarts the app: requests fail)."""
    site = day.site
    res = day.watcher("check")
    assert res.returncode == 0, tail(res)
    out = res.stdout
    assert f"ok    remote: main at {site.head()[:12]}" in out
    assert "ok    supervisord" in out
    assert "ok    program mysite: RUNNING" in out
    assert "ok    installer: uv: uv " in out
    warnings = [line for line in out.splitlines() if line.startswith("warn")]
    assert len(warnings) == 1 and warnings[0].startswith("warn  reload: without [bluegreen]")
    assert "fail" in warnings[0] and "conf.d-bluegreen" in warnings[0]
    resolved = site.root / "releases" / site.live_release()
    site.sv.add_program("mysite_pinned", (
        f"command={resolved}/.venv/bin/gunicorn --chdir {resolved} -c {resolved}/gunicorn.conf.py\n"
        "autostart=false\n"))
    config = site.base / "check.toml"
    text = site.config.read_text()
    assert 'programs = ["mysite"]' in text
    config.write_text(text.replace('programs = ["mysite"]',
                                   'programs = ["mysite", "mysite_pinned"]'))
    res = run_cli("check", "--config", str(config))
    day.runs.append(res)
    assert res.returncode == 0, tail(res)
    assert f"warn  program mysite_pinned: command lacks --chdir {site.root}/current" in res.stdout
    assert "warn  program mysite:" not in res.stdout


# -- 12. the token canary -----------------------------------------------------------------
def test_report_token_is_in_no_log_line(day: Day) -> None:
    """The report token appears in no output of any watcher run above, nor in state.json,
    the spool or a report body; it was sent only in the Authorization header."""
    site = day.site
    assert len(day.runs) >= 15
    leaks = [i for i, r in enumerate(day.runs) if TOKEN in r.stdout or TOKEN in r.stderr]
    assert leaks == []
    assert TOKEN not in (site.root / ".watcher" / "state.json").read_text()
    spooled = [p for p in (site.root / ".watcher").rglob("*") if p.is_file()
               and TOKEN.encode() in p.read_bytes()]
    assert spooled == []
    requests = site.api.requests
    assert len(requests) >= 8
    assert all(TOKEN.encode() not in r.body for r in requests)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in requests)
