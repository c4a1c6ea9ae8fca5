"""`watcher plan` on a real Site: it reports what a deploy would do (commits, venv, migrations,
collectstatic, reload, holds, signature) and leaves releases/, `current`, state.json and the
served revision as they were. Runtime: about 40-60 s (one venv build for the new requirement)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.site import Site, settled

pytestmark = pytest.mark.slow

MIGRATION = '''from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]
    operations = [
        migrations.AddField("visit", "path", models.CharField(max_length=200, null=True)),
    ]
'''


@dataclass
class Box:
    site: Site
    live_sha: str


@pytest.fixture(scope="module")
def box(site_factory: Callable[..., Site]) -> Box:
    site = site_factory(health_timeout="10s")
    res = site.watcher("--once", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return Box(site, site.head())


def snapshot(site: Site) -> tuple[list[str], str, str, str, list[str]]:
    state = (site.root / ".watcher" / "state.json").read_text()
    stray = sorted(p.name for p in (site.root / ".watcher").iterdir() if p.name.startswith("plan-"))
    return site.releases(), os.readlink(site.root / "current"), state, site.served_revision(), stray


def plan(site: Site, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    res = site.watcher("plan", *args, "--json", timeout=300)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    return res, json.loads(res.stdout)


def test_plan_when_up_to_date(box: Box) -> None:
    """With the live release at the head, plan says there is nothing to do (exit 0)."""
    res, out = plan(box.site)
    assert res.returncode == 0 and out["decision"] == "up_to_date"


def test_plan_new_requirement_and_migration_changes_nothing_live(box: Box) -> None:
    """A commit adding a requirement and a migration: plan lists the commit, a venv build,
    the pending migration, collectstatic run (requirements changed) and a restart of the
    program; it builds the venv into venvs/ (reused by the deploy after it) and leaves
    releases/, `current`, state.json and the served revision unchanged."""
    site = box.site
    sha = site.commit({
        "requirements.txt": site.read("requirements.txt") + "packaging==26.4\n",
        "pages/migrations/0002_visit_path.py": MIGRATION,
    }, "Track the visited path; packaging for version parsing")
    before = snapshot(site)
    text = site.watcher("plan", timeout=300)
    print("\n$ watcher plan\n" + text.stdout)
    assert text.returncode == 0, text.stderr[-3000:]
    assert "-> DEPLOY" in text.stdout and "pages.0002_visit_path" in text.stdout
    assert "venv:         build" in text.stdout
    assert snapshot(site) == before
    res, out = plan(site)  # the venv the first plan built is now reused
    assert snapshot(site) == before
    assert res.returncode == 0 and out["decision"] == "deploy", out
    assert out["target"] == {"sha": sha, "tag": None}
    assert [c["sha"] for c in out["commits"]] == [sha]  # type: ignore[index]
    assert out["venv"]["action"] == "reuse" and not out["venv"]["built_now"]  # type: ignore[index]
    [pending] = out["migrations"]["pending"]  # type: ignore[index]
    assert pending["name"] == "pages.0002_visit_path" and pending["class"] == "safe", pending
    assert pending["operations"][0].startswith("AddField(visit.path): safe")
    assert out["collectstatic"]["action"] == "run"  # type: ignore[index]
    assert out["reload"] == [{"program": "mysite", "action": "restart"}]
    assert out["signature"] == {"verdict": "off"}
    assert out["hold"] is None and out["skip"] is None
    deploy = site.watcher("--once", timeout=300)
    assert deploy.returncode == 0, deploy.stderr[-3000:]
    assert settled(site, sha) == sha
    steps = [json.loads(line) for line in deploy.stderr.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "step.start" and e.get("step") == "venv"
               and e.get("action") == "reuse" for e in steps)


def test_plan_refuses_a_commit_that_fails_the_gate(box: Box) -> None:
    """A commit whose Django check fails: plan exits 1 and names the failed step, with
    nothing left in releases/ or under .watcher/."""
    site = box.site
    views = site.read("pages/views.py")
    bad = site.commit({"pages/views.py": "import watcher_plan_no_such_module\n" + views},
                      "Import a module that does not exist")
    before = snapshot(site)
    res, out = plan(site)
    assert res.returncode == 1 and out["decision"] == "refuse"
    assert out["target"]["sha"] == bad  # type: ignore[index]
    assert out["error"]["step"] == "check"  # type: ignore[index]
    assert snapshot(site) == before
    site.commit({"pages/views.py": views}, "Fix the import")


UNSAFE = MIGRATION.replace('("pages", "0001_initial")', '("pages", "0002_visit_path")').replace(
    'migrations.AddField("visit", "path", models.CharField(max_length=200, null=True))',
    'migrations.AddField("visit", "size", models.IntegerField(default=0))')


def test_plan_shows_an_unsafe_migration_and_its_refusal(box: Box) -> None:
    """A NOT NULL column without db_default: plan classes it unsafe, prints the refusal a
    deploy would stop on (the fix included) and exits 1, changing nothing."""
    site = box.site
    site.commit({"pages/migrations/0003_visit_size.py": UNSAFE}, "Count visit sizes")
    before = snapshot(site)
    res = site.watcher("plan", timeout=300)
    print("\n$ watcher plan\n" + res.stdout)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "-> REFUSE" in res.stdout
    assert "pages.0003_visit_size [unsafe]" in res.stdout
    assert ("REFUSED:      1 migration operation would break the live release while it serves "
            "on the new schema") in res.stdout
    assert "AddField(visit.size): NOT NULL without db_default" in res.stdout
    assert snapshot(site) == before
    site.commit({"pages/migrations/0003_visit_size.py": None}, "Do not count sizes")


def test_plan_of_a_rev_and_holds(box: Box) -> None:
    """`plan REV` plans that commit (no holds apply to `deploy REV`); without REV, a pause
    shows as a hold with its reason (exit 0, nothing refused)."""
    site = box.site
    live = site.state()["live"]
    res = site.watcher("pause", "--reason", "db maintenance", "--until", "2h")
    assert res.returncode == 0, res.stderr
    try:
        _, out = plan(site)
        assert out["decision"] == "hold"
        assert "db maintenance" in out["hold"]["detail"]  # type: ignore[index]
        res, out = plan(site, box.live_sha)
        assert res.returncode == 0 and out["decision"] == "deploy" and "hold" not in out
    finally:
        assert site.watcher("resume").returncode == 0
    assert site.state()["live"] == live
    assert not list(Path(site.root / ".watcher").glob("plan-*"))
