"""Migrations under steady writes (DESIGN 2a): refused, contracted after the switch, reversed.

One sandbox (the example app on SQLite, Gunicorn under a real supervisord) for the module;
the tests run in file order, each deploy building on the one before. Writes are POSTs to
the example app's /write view from a load generator, every answer that is not a 200 counted
as a failed write.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.load import Load, LoadResult
from support.site import BROKEN_UNDER_GUNICORN, HEALTHZ, Site, log_events, settled, tail

pytestmark = pytest.mark.slow

MIGRATION = '''from django.db import migrations, models


def forwards(apps, schema_editor):
    pass


class Migration(migrations.Migration):
    dependencies = [("pages", "{parent}")]
    operations = [{ops}]
'''
MODELS = '''from django.db import models


class Visit(models.Model):
    """One request to the front page."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
{fields}
'''
NOTE = '''

class Note(models.Model):
    text = models.TextField(null=True)
'''
SIZE = "    size = models.IntegerField(default=0)\n"
LABEL = '    label = models.CharField(max_length=20, db_default="")\n'
REFUSAL = ("pages.0002_visit_size: AddField(visit.size): NOT NULL without db_default: the old "
           "code's INSERTs fail; add db_default=..., or null=True, and backfill in a later "
           "deploy")


def migration(name: str, parent: str, ops: str) -> dict[str, str]:
    return {f"pages/migrations/{name}.py": MIGRATION.format(parent=parent, ops=ops)}


def models(*fields: str, note: bool = False) -> dict[str, str]:
    return {"pages/models.py": MODELS.format(fields="".join(fields)) + (NOTE if note else "")}


def columns(site: Site, table: str = "pages_visit") -> list[str]:
    db = site.root / "shared" / "data" / "db.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def with_config(site: Site, name: str, extra: str) -> Path:
    """A copy of the site's config with `extra` TOML appended."""
    path = site.base / f"{name}.toml"
    path.write_text(site.config.read_text() + "\n" + extra)
    return path


def watcher(site: Site, *args: str, config: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args, "--config", str(config or site.config)],
        capture_output=True, text=True, timeout=300, env=env, check=False)


def under_writes(site: Site, *args: str, config: Path | None = None
                 ) -> tuple[subprocess.CompletedProcess[str], LoadResult]:
    """Run watcher while a load generator POSTs /write; the run and the writes' tally."""
    load = Load(f"http://127.0.0.1:{site.port}/write", rate=40, threads=2, max_seconds=240,
                method="POST").start()
    try:
        res = watcher(site, *args, config=config)
    finally:
        result = load.stop()
    return res, result


def report(site: Site) -> dict[str, Any]:
    doc: dict[str, Any] = site.api.requests[-1].json
    return doc


@pytest.fixture(scope="module")
def site(site_factory: Callable[..., Site]) -> Site:
    site = site_factory(health_timeout="20s")
    res = site.watcher("--once")
    assert res.returncode == 0, tail(res)
    return site


def test_unsafe_add_field_is_refused_before_any_write_fails(site: Site) -> None:
    """A NOT NULL column without db_default stops the deploy in the gate: exit 1, the error
    lists the operation with why and how to fix, no write fails, the schema is untouched."""
    live = site.live_release()
    site.commit({**models(SIZE), **migration("0002_visit_size", "0001_initial",
                                            'migrations.AddField("visit", "size", '
                                            "models.IntegerField(default=0))")},
                "Count visit sizes (NOT NULL, no db_default)")
    res, writes = under_writes(site, "--once")
    assert res.returncode == 1, tail(res)
    assert writes.failed == 0 and writes.ok > 0, writes.errors
    doc = report(site)
    assert doc["outcome"] == "failed" and doc["error"]["step"] == "check"
    assert REFUSAL in doc["error"]["message"]
    assert "docs/migrations.md" in doc["error"]["message"]
    assert REFUSAL in res.stdout
    assert "size" not in columns(site)
    assert site.live_release() == live
    assert [s["name"] for s in doc["steps"]][-1] == "check"  # no migrate step ran


def test_the_same_commit_with_warn_and_a_slow_hook_breaks_writes(site: Site) -> None:
    """Negative control: with migration_safety = "warn" the old code serves on the new schema
    while a slow pre_switch hook runs, and the instrument sees its INSERTs fail."""
    config = with_config(site, "warn", '[django]\nmigration_safety = "warn"\n'
                         '[hooks]\npre_switch = [["sleep", "3"]]\n')
    res, writes = under_writes(site, "deploy", site.head(), config=config)
    assert res.returncode == 0, tail(res)
    assert writes.failed > 0, writes
    doc = report(site)
    assert doc["outcome"] == "succeeded"
    assert any(REFUSAL in w for w in doc["warnings"]), doc["warnings"]
    assert "size" in columns(site)


def test_db_default_add_field_keeps_every_write(site: Site) -> None:
    """A column with db_default (and a new model) is added before the switch: no write
    fails while the old code serves on the new schema."""
    sha = site.commit({**models(SIZE, LABEL, note=True), **migration(
        "0003_label_note", "0002_visit_size",
        'migrations.AddField("visit", "label", models.CharField(max_length=20, '
        'db_default="")), migrations.CreateModel("Note", fields=[("id", '
        "models.BigAutoField(primary_key=True, serialize=False)), "
        '("text", models.TextField(null=True))])')}, "Label visits; notes")
    res, writes = under_writes(site, "--once")
    assert res.returncode == 0, tail(res)
    assert writes.failed == 0 and writes.ok > 0, writes.errors
    assert report(site)["migrations_applied"] == ["pages.0003_label_note"]
    assert "label" in columns(site)
    assert settled(site, sha) == sha


def test_contract_remove_field_runs_after_the_switch(site: Site) -> None:
    """RemoveField of a db_default column waits until the new code serves alone: the column
    is there at pre_switch time, gone afterwards, and no write fails."""
    seen, hook = site.base / "pre-switch-columns", site.base / "hook.py"
    hook.write_text("import sqlite3\nconn = sqlite3.connect('data/db.sqlite3')\n"
                    "cols = [r[1] for r in conn.execute('PRAGMA table_info(pages_visit)')]\n"
                    f"open({str(seen)!r}, 'w').write(' '.join(cols))\n")
    config = with_config(site, "hook", f'[hooks]\npre_switch = [["python", "{hook}"]]\n')
    sha = site.commit({**models(SIZE, note=True), **migration(
        "0004_remove_label", "0003_label_note", 'migrations.RemoveField("visit", "label")')},
        "Stop labelling visits")
    res, writes = under_writes(site, "--once", config=config)
    assert res.returncode == 0, tail(res)
    assert writes.failed == 0 and writes.ok > 0, writes.errors
    assert "label" in seen.read_text().split()
    assert "label" not in columns(site)
    doc = report(site)
    names = [s["name"] for s in doc["steps"]]
    outcomes = {s["name"]: s["outcome"] for s in doc["steps"]}
    assert outcomes["migrate"] == "skipped" and outcomes["contract_migrate"] == "ok"
    assert names.index("contract_migrate") > names.index("health")
    assert doc["migrations_applied"] == ["pages.0004_remove_label"]
    assert settled(site, sha) == sha


def test_sigkill_during_a_contract_migration_recovers(site: Site) -> None:
    """A watcher killed while a contract migration waits on the database leaves it pending;
    the next start runs it."""
    site.commit({**models(SIZE), **migration(
        "0005_delete_note", "0004_remove_label", 'migrations.DeleteModel("Note")')},
        "Drop notes")
    db = site.root / "shared" / "data" / "db.sqlite3"
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # writers wait (up to the app's 20 s timeout)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "watcher", "--once", "--config", str(site.config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            events = log_events(line)
            if events and events[0].get("event") == "step.start" \
                    and events[0].get("step") == "contract_migrate":
                break
        else:
            raise AssertionError("no contract migration started")
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        children = site.root / ".watcher" / "children"
        for marker in children.iterdir():  # the whole tree dies, as in a power cut
            if marker.name.isdigit():
                os.killpg(int(marker.name), signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        blocker.execute("ROLLBACK")
        blocker.close()
    assert "pages_note" in tables(site)
    res = site.watcher("--once")
    assert res.returncode == 0, tail(res)
    assert "pages_note" not in tables(site)
    assert "contract.recovered" in [e.get("event") for e in log_events(res.stderr)]


def tables(site: Site) -> list[str]:
    db = site.root / "shared" / "data" / "db.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]


def test_rollback_migrate_reverses_the_newer_migrations(site: Site) -> None:
    """`rollback --migrate` reverses what the older release does not know, with the newer
    release's code, then switches; the report lists them in migrations_reversed."""
    live = site.live_release()
    res = site.watcher("rollback", "--migrate")
    print(res.stdout)
    assert res.returncode == 0, tail(res)
    assert "pages.0005_delete_note" in res.stdout
    assert "pages_note" in tables(site)
    assert site.live_release() != live
    doc = report(site)
    assert doc["event"] == "rollback" and doc["migrations_reversed"] == ["pages.0005_delete_note"]


def test_rollback_migrate_refuses_an_irreversible_migration(site: Site) -> None:
    """With a RunPython without reverse_code among them, `rollback --migrate` changes nothing;
    a plain rollback names the migrations the older release does not know."""
    site.commit(migration("0006_forwards_only", "0005_delete_note",
                          "migrations.RunPython(forwards)"), "A data migration")
    res = watcher(site, "deploy", site.head(), "--allow-unsafe-migrations")
    assert res.returncode == 0, tail(res)
    assert any("--allow-unsafe-migrations" in w for w in report(site)["warnings"])
    live = site.live_release()
    res = site.watcher("rollback", "--migrate")
    print(res.stdout, res.stderr[-500:])
    assert res.returncode == 1, tail(res)
    assert "pages.0006_forwards_only: RunPython cannot be reversed" in res.stdout + res.stderr
    assert site.live_release() == live and "pages_note" not in tables(site)
    res = site.watcher("rollback")
    print(res.stdout)
    assert res.returncode == 0, tail(res)
    assert "pages.0006_forwards_only" in res.stdout and "pages.0005_delete_note" in res.stdout


TAG = '''

class Tag(models.Model):
    name = models.TextField(null=True)
'''


def test_a_failed_contract_migration_runs_before_the_next_switch(site: Site) -> None:
    """A contract migration that fails after the switch leaves the new release live and says
    so; the next commit's migration depends on it (as any new migration of the app does),
    and that deploy runs both before its switch instead of refusing the pending removal."""
    create_tag = ('migrations.CreateModel("Tag", [("id", models.BigAutoField(primary_key=True)),'
                  ' ("name", models.TextField(null=True))])')
    site.commit({"pages/models.py": models(SIZE)["pages/models.py"] + TAG,
                 **migration("0007_tag", "0006_forwards_only", create_tag)}, "Tags")
    res = site.watcher("--once")
    assert res.returncode == 0, tail(res)
    db = site.root / "shared" / "data" / "db.sqlite3"
    with sqlite3.connect(db) as conn:  # gone behind Django's back: its DeleteModel fails
        (create,) = conn.execute("SELECT sql FROM sqlite_master WHERE name='pages_tag'").fetchone()
        conn.execute("DROP TABLE pages_tag")
    removal = site.commit({**models(SIZE), **migration(
        "0008_delete_tag", "0007_tag", 'migrations.DeleteModel("Tag")')}, "No more tags")
    res = site.watcher("--once")
    assert res.returncode == 0, tail(res)
    doc = report(site)
    outcomes = {s["name"]: s["outcome"] for s in doc["steps"]}
    assert (doc["outcome"], outcomes["contract_migrate"]) == ("succeeded", "failed")
    assert any("contract migrations failed" in w for w in doc["warnings"]), doc["warnings"]
    assert settled(site, removal) == removal
    with sqlite3.connect(db) as conn:  # the operator puts it back: the removal can run
        conn.execute(create)
    site.commit({**models("    tag = models.TextField(null=True)\n", SIZE), **migration(
        "0009_visit_tag", "0008_delete_tag",
        'migrations.AddField("visit", "tag", models.TextField(null=True))')}, "Tag visits")
    res = site.watcher("--once")
    assert res.returncode == 0, tail(res)
    doc = report(site)
    assert doc["outcome"] == "succeeded", doc["error"]
    assert doc["migrations_applied"] == ["pages.0008_delete_tag", "pages.0009_visit_tag"]
    assert "pages_tag" not in tables(site) and "tag" in columns(site)
    names = [s["name"] for s in doc["steps"]]
    assert names.index("migrate") < names.index("switch")


def test_a_deploy_that_rolls_back_never_runs_its_contract_migrations(site: Site) -> None:
    """A commit with a contract migration whose release fails its health check rolls back
    before step 12b: the column stays for the old code; the fixed commit removes it."""
    views = site.read("pages/views.py")
    assert HEALTHZ in views
    removal = migration("0010_remove_visit_tag", "0009_visit_tag",
                        'migrations.RemoveField("visit", "tag")')
    site.commit({**models(SIZE), **removal,
                 "pages/views.py": views.replace(HEALTHZ, BROKEN_UNDER_GUNICORN + HEALTHZ)},
                "Drop visit tags, and a health check that fails under Gunicorn")
    before = site.served_revision()
    res = site.watcher("--once")
    assert res.returncode == 1, tail(res)
    doc = report(site)
    assert doc["outcome"] == "rolled_back" and doc["error"]["step"] == "health", doc["error"]
    assert "contract_migrate" not in [s["name"] for s in doc["steps"]]
    assert "tag" in columns(site)
    assert settled(site, before) == before, site.program_log()
    fixed = site.commit({"pages/views.py": views}, "Health fixed")
    res = site.watcher("--once")
    assert res.returncode == 0, tail(res) + site.program_log()
    doc = report(site)
    assert {s["name"]: s["outcome"] for s in doc["steps"]}["contract_migrate"] == "ok"
    assert "tag" not in columns(site) and settled(site, fixed) == fixed
