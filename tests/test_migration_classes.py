"""The migration classes of DESIGN 2a, decided in the gate's real Django boot.

One temp Django project holds one app per case. Each app's `0001_base` is applied for real
(SQLite), then the case's pending migration files are written and the gate
(`Django.inspect(gate=True, classify=True)`) classes them, on Django 5.2 (the dev venv) and on
Django 4.2 when its wheel is in the wheel cache (a throwaway venv built with uv).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.site import wheelhouse

from watcher.config import DjangoConfig
from watcher.engine.migrations import ALLOWED, MigrationPolicy, decide
from watcher.parts.django_findings import Inspection, Verdict
from watcher.parts.django_steps import Django
from watcher.parts.state import State

BASE = """
migrations.CreateModel(name="Item", fields=[
    ("id", models.BigAutoField(primary_key=True, serialize=False)),
    ("name", models.CharField(max_length=50)),
    ("note", models.CharField(max_length=50, null=True)),
    ("qty", models.IntegerField(default=0)),
    ("small", models.SmallIntegerField(default=0)),
], options={
    "indexes": [models.Index(fields=["name"], name="%(app)s_name_idx")],
    "constraints": [models.UniqueConstraint(fields=["name"], name="%(app)s_name_uniq")],
}),
migrations.CreateModel(name="Tag", fields=[
    ("id", models.BigAutoField(primary_key=True, serialize=False)),
    ("label", models.CharField(max_length=20)),
]),
"""
ADD_CODE = 'migrations.AddField("item", "code", models.CharField(max_length=9, db_default="x")),'
NULLABLE = "models.CharField(max_length=20, null=True)"
# name: (extra base operations, {pending migration: operations}, [(operation, class)], needs 5)
CASES: dict[str, tuple[str, dict[str, str], list[tuple[str, str]], bool]] = {
    # safe
    "create_model": ("", {"0002_x": 'migrations.CreateModel("Thing", fields=[("id", '
                          'models.BigAutoField(primary_key=True, serialize=False))]),'},
                     [("CreateModel(thing)", "safe")], False),
    "add_nullable": ("", {"0002_x": f'migrations.AddField("item", "extra", {NULLABLE}),'},
                     [("AddField(item.extra)", "safe")], False),
    "add_db_default": ("", {"0002_x": 'migrations.AddField("item", "flag", '
                            "models.BooleanField(db_default=False)),"},
                       [("AddField(item.flag)", "safe")], True),
    "add_m2m": ("", {"0002_x": 'migrations.AddField("item", "tags", '
                     'models.ManyToManyField(to="%(app)s.tag")),'},
                [("AddField(item.tags)", "safe")], False),
    "add_index": ("", {"0002_x": 'migrations.AddIndex("item", models.Index(fields=["qty"], '
                       'name="%(app)s_qty_idx")),'},
                  [("AddIndex(item.%(app)s_qty_idx)", "safe")], False),
    "unique_on_new_column": ("", {"0002_x": f'migrations.AddField("item", "sku", {NULLABLE}),'
                                  'migrations.AddConstraint("item", models.UniqueConstraint('
                                  'fields=["sku"], name="%(app)s_sku")),'},
                             [("AddField(item.sku)", "safe"),
                              ("AddConstraint(item.%(app)s_sku)", "safe")], False),
    "relax_null": ("", {"0002_x": 'migrations.AlterField("item", "name", '
                        "models.CharField(max_length=50, null=True)),"},
                   [("AlterField(item.name)", "safe")], False),
    "relax_length": ("", {"0002_x": 'migrations.AlterField("item", "name", '
                          "models.CharField(max_length=100)),"},
                     [("AlterField(item.name)", "safe")], False),
    "widen_int": ("", {"0002_x": 'migrations.AlterField("item", "small", '
                       "models.IntegerField(default=0)),"},
                  [("AlterField(item.small)", "safe")], False),
    "python_only_change": ("", {"0002_x": 'migrations.AlterField("item", "name", models.'
                                'CharField(max_length=50, verbose_name="N", help_text="h")),'},
                           [("AlterField(item.name)", "safe")], False),
    "on_new_model": ("", {
        "0002_x": 'migrations.CreateModel("Thing", fields=[("id", models.BigAutoField('
                  'primary_key=True, serialize=False)), ("a", models.IntegerField())]),',
        "0003_y": 'migrations.RemoveField("thing", "a"),'
                  'migrations.AddField("thing", "b", models.IntegerField(default=1)),'},
        [("CreateModel(thing)", "safe"), ("RemoveField(thing.a)", "safe"),
         ("AddField(thing.b)", "safe")], False),
    "state_only": ("", {"0002_x": "migrations.SeparateDatabaseAndState(state_operations=["
                        'migrations.AlterModelOptions("item", {"ordering": ["name"]})]),'},
                   [("SeparateDatabaseAndState", "safe")], False),
    # contract
    "remove_nullable": ("", {"0002_x": 'migrations.RemoveField("item", "note"),'},
                        [("RemoveField(item.note)", "contract")], False),
    "remove_db_default": (ADD_CODE, {"0002_x": 'migrations.RemoveField("item", "code"),'},
                          [("RemoveField(item.code)", "contract")], True),
    "delete_model": ("", {"0002_x": 'migrations.DeleteModel("Tag"),'},
                     [("DeleteModel(tag)", "contract")], False),
    "remove_index": ("", {"0002_x": 'migrations.RemoveIndex("item", "%(app)s_name_idx"),'},
                     [("RemoveIndex(item.%(app)s_name_idx)", "contract")], False),
    "remove_constraint": ("", {"0002_x": 'migrations.RemoveConstraint("item", '
                               '"%(app)s_name_uniq"),'},
                          [("RemoveConstraint(item.%(app)s_name_uniq)", "contract")], False),
    # unsafe
    "add_not_null": ("", {"0002_x": 'migrations.AddField("item", "size", '
                          "models.IntegerField(default=0)),"},
                     [("AddField(item.size)", "unsafe")], False),
    "remove_not_null": ("", {"0002_x": 'migrations.RemoveField("item", "qty"),'},
                        [("RemoveField(item.qty)", "unsafe")], False),
    "rename_field": ("", {"0002_x": 'migrations.RenameField("item", "note", "remark"),'},
                     [("RenameField(item.remark)", "unsafe")], False),
    "rename_model": ("", {"0002_x": 'migrations.RenameModel("Tag", "Label"),'},
                     [("RenameModel(tag)", "unsafe")], False),
    "tighten_null": ("", {"0002_x": 'migrations.AlterField("item", "note", '
                          "models.CharField(max_length=50)),"},
                     [("AlterField(item.note)", "unsafe")], False),
    "shorten": ("", {"0002_x": 'migrations.AlterField("item", "name", '
                     "models.CharField(max_length=20)),"},
                [("AlterField(item.name)", "unsafe")], False),
    "narrow_type": ("", {"0002_x": 'migrations.AlterField("item", "qty", '
                         "models.SmallIntegerField(default=0)),"},
                    [("AlterField(item.qty)", "unsafe")], False),
    "unique_together": ("", {"0002_x": 'migrations.AlterUniqueTogether("item", '
                             '{("note", "qty")}),'},
                        [("AlterUniqueTogether(item)", "unsafe")], False),
    "constraint_on_old_columns": ("", {"0002_x": 'migrations.AddConstraint("item", models.'
                                       'UniqueConstraint(fields=["qty"], name="%(app)s_q")),'},
                                  [("AddConstraint(item.%(app)s_q)", "unsafe")], False),
    "contract_then_dependant": ("", {
        "0002_x": 'migrations.RemoveField("item", "note"),',
        "0003_y": f'migrations.AddField("item", "extra", {NULLABLE}),'},
        [("RemoveField(item.note)", "unsafe"), ("AddField(item.extra)", "safe")], False),
    "contract_mixed_in": ("", {"0002_x": 'migrations.RemoveField("item", "note"),'
                               f'migrations.AddField("item", "extra", {NULLABLE}),'},
                          [("RemoveField(item.note)", "unsafe"),
                           ("AddField(item.extra)", "safe")], False),
    # unknown
    "run_sql": ("", {"0002_x": 'migrations.RunSQL("SELECT 1", "SELECT 1"),'},
                [("RunSQL", "unknown")], False),
    "run_python": ("", {"0002_x": "migrations.RunPython(migrations.RunPython.noop),"},
                   [("RunPython", "unknown")], False),
    "separate_with_db": ("", {"0002_x": "migrations.SeparateDatabaseAndState("
                              'database_operations=[migrations.RunSQL("SELECT 1")]),'},
                         [("SeparateDatabaseAndState", "unknown")], False),
}
MIGRATION = """from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = %(deps)r
    operations = [
%(ops)s
    ]
"""


def write_project(root: Path, apps: list[str]) -> None:
    (root / "proj").mkdir(parents=True)
    (root / "manage.py").write_text(
        "import os, sys\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings')\n"
        "from django.core.management import execute_from_command_line\n"
        "execute_from_command_line(sys.argv)\n")
    (root / "proj" / "__init__.py").write_text("")
    (root / "proj" / "urls.py").write_text("urlpatterns = []\n")
    (root / "proj" / "wsgi.py").write_text(
        "from django.core.wsgi import get_wsgi_application\n"
        "application = get_wsgi_application()\n")
    (root / "proj" / "settings.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        SECRET_KEY = "test-only"
        INSTALLED_APPS = {apps!r}
        DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3",
                                  "NAME": str(Path(__file__).parent.parent / "db.sqlite3")}}}}
        ROOT_URLCONF = "proj.urls"
        WSGI_APPLICATION = "proj.wsgi.application"
        USE_TZ = True
        """))
    for app in apps:
        extra = CASES[app[2:]][0]
        mig = root / app / "migrations"
        mig.mkdir(parents=True)
        (root / app / "__init__.py").write_text("")
        (mig / "__init__.py").write_text("")
        ops = (BASE + extra) % {"app": app}
        (mig / "0001_base.py").write_text(MIGRATION % {"deps": [], "ops": ops})


def write_pending(root: Path, apps: list[str]) -> None:
    for app in apps:
        previous = "0001_base"
        for name, ops in CASES[app[2:]][1].items():
            text = MIGRATION % {"deps": [(app, previous)], "ops": ops % {"app": app}}
            (root / app / "migrations" / f"{name}.py").write_text(text)
            previous = name


def venv_with_django42(base: Path) -> Path | None:
    """A throwaway venv with Django 4.2 from the wheel cache; None when the cache lacks it."""
    wheels = sorted(wheelhouse().glob("[Dd]jango-4.2.*.whl"))
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not wheels or not Path(uv).exists():
        return None
    venv = base / "venv42"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True,
                   timeout=120)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    "--no-index", "--find-links", str(wheelhouse()), str(wheels[-1])],
                   check=True, timeout=300)
    return venv


def gate(tmp: Path, venv: Path, django5: bool) -> tuple[Inspection, list[str]]:
    apps = [f"c_{n}" for n, case in CASES.items() if django5 or not case[3]]
    root = tmp / ("dj5" if django5 else "dj42")
    write_project(root, apps)
    (root / ".venv").symlink_to(venv)
    django = Django(DjangoConfig(), root)
    django.migrate()
    write_pending(root, apps)
    return django.inspect(gate=True, classify=True), apps


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple]]:
    tmp = tmp_path_factory.mktemp("classes")
    found = {"5.2": gate(tmp, Path(sys.prefix), True)}
    venv42 = venv_with_django42(tmp)
    if venv42 is not None:
        found["4.2"] = gate(tmp, venv42, False)
    yield found


# Every case on Django 5.2; on 4.2 only those that 4.2 can express (no db_default).
VERSIONED_CASES = [(case, version) for case in sorted(CASES) for version in ("5.2", "4.2")
                   if version == "5.2" or not CASES[case][3]]


@pytest.mark.parametrize(("case", "version"), VERSIONED_CASES)
def test_class_of_each_operation(gates: dict[str, tuple], version: str, case: str) -> None:
    """Each row of DESIGN 2a's table gets its class from the real migration files."""
    assert version in gates, "no Django 4.2 wheel in the wheel cache (make wheelhouse fetches it)"
    inspection, apps = gates[version]
    app = f"c_{case}"
    assert app in apps
    got = [(v.operation, v.klass) for v in inspection.verdicts if v.migration.startswith(app)]
    assert got == [(op % {"app": app}, klass) for op, klass in CASES[case][2]]
    for v in inspection.verdicts:
        assert v.why
        if v.klass == "unsafe":
            assert v.fix, v


def test_fix_line_names_what_the_django_version_has(gates: dict[str, tuple]) -> None:
    """The fix for a NOT NULL AddField says db_default on Django 5, null=True on 4.2."""
    for version, (inspection, _) in gates.items():
        [verdict] = [v for v in inspection.verdicts if v.migration == "c_add_not_null.0002_x"]
        assert verdict.line() == (
            "c_add_not_null.0002_x: AddField(item.size): NOT NULL without db_default: the old "
            "code's INSERTs fail; " + (
                "add db_default=..., or null=True, and backfill in a later deploy"
                if version == "5.2" else
                "add null=True (Django 4.2 has no db_default), backfill, and make it NOT NULL "
                "in a later deploy"))


def test_contract_migrations_are_held_for_after_the_switch(gates: dict[str, tuple]) -> None:
    """Only migrations made wholly of contract operations wait; the rest have targets."""
    inspection, _ = gates["5.2"]
    held = inspection.contract()
    assert "c_remove_nullable.0002_x" in held
    assert "c_contract_then_dependant.0002_x" not in held
    assert "c_contract_mixed_in.0002_x" not in held
    targets = dict(inspection.before_switch_targets() or [])
    assert "c_remove_nullable" not in targets
    assert targets["c_on_new_model"] == "0003_y"


def test_gate_records_the_leaf_of_every_app(gates: dict[str, tuple]) -> None:
    """The gate reports the newest migration of each app that the release knows."""
    inspection, apps = gates["5.2"]
    assert inspection.leaves["c_on_new_model"] == "0003_y"
    assert inspection.leaves["c_run_sql"] == "0002_x"
    assert set(apps) <= set(inspection.leaves)


# -- what `rollback --migrate` reverses --------------------------------------------------
CHAIN = {  # app: [(name, dependencies, operations)]
    "r_a": [("0001_a", [], 'migrations.CreateModel("A", fields=[("id", models.BigAutoField('
             'primary_key=True, serialize=False))]),'),
            ("0002_a", [("r_a", "0001_a")], 'migrations.AddField("a", "x", '
             "models.IntegerField(null=True)),")],
    "r_b": [("0001_b", [], 'migrations.CreateModel("B", fields=[("id", models.BigAutoField('
             'primary_key=True, serialize=False))]),'),
            ("0002_b", [("r_b", "0001_b"), ("r_a", "0002_a")],
             'migrations.AddField("b", "a", models.ForeignKey("r_a.a", null=True, '
             "on_delete=models.CASCADE)),")],
    "r_c": [("0001_c", [], "migrations.RunSQL('SELECT 1', 'SELECT 1'),"),
            ("0002_c", [("r_c", "0001_c")], "migrations.RunPython(lambda apps, schema: None),")],
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Django:
    """A project whose apps r_a, r_b, r_c have every migration applied (r_b.0002 depends on
    r_a.0002)."""
    root = tmp_path_factory.mktemp("reverse")
    write_project(root, [])
    settings = root / "proj" / "settings.py"
    settings.write_text(settings.read_text().replace("INSTALLED_APPS = []",
                                                     f"INSTALLED_APPS = {sorted(CHAIN)!r}"))
    for app, migrations in CHAIN.items():
        (root / app / "migrations").mkdir(parents=True)
        (root / app / "__init__.py").write_text("")
        (root / app / "migrations" / "__init__.py").write_text("")
        for name, deps, ops in migrations:
            text = MIGRATION % {"deps": deps, "ops": ops}
            (root / app / "migrations" / f"{name}.py").write_text(text)
    (root / ".venv").symlink_to(sys.prefix)
    django = Django(DjangoConfig(), root)
    django.migrate()
    return django


def test_reversal_names_unknown_migrations_in_dependency_order(chain: Django) -> None:
    """Migrations an older release does not know are listed dependants first, with one
    `migrate APP TARGET` per app; an app the older release lacks goes back to zero."""
    rev = chain.reversal({"r_a": "0001_a", "r_b": "0001_b", "r_c": "0002_c"})
    assert rev.migrations == ("r_b.0002_b", "r_a.0002_a")
    assert rev.commands == (("r_b", "0001_b"), ("r_a", "0001_a"))
    assert rev.irreversible == () and rev.problems == ()
    gone = chain.reversal({"r_a": "0002_a", "r_b": "0002_b"})
    assert gone.migrations == ("r_c.0002_c", "r_c.0001_c")
    assert gone.commands == (("r_c", "zero"),)
    assert gone.irreversible == ("r_c.0002_c: RunPython cannot be reversed",)
    assert chain.reversal({"r_a": "0009_nope"}).problems


def test_reversal_commands_unapply_exactly_those(chain: Django) -> None:
    """Running the commands leaves the schema where the older release expects it."""
    leaves = {"r_a": "0001_a", "r_b": "0001_b", "r_c": "0002_c"}
    for app, target in chain.reversal(leaves).commands:
        chain.migrate(app, target, step="migrate_back")
    assert chain.reversal(leaves).migrations == ()
    assert [*chain.inspect().pending] == ["r_a.0002_a", "r_b.0002_b"]
    chain.migrate()


# -- what the classes decide (pure) --------------------------------------------------------
def _v(migration: str, klass: str, op: str = "Op(m.f)") -> Verdict:
    return Verdict(migration, op, klass, "why", "fix" if klass == "unsafe" else "")


SAFE, UNSAFE = _v("a.0002", "safe"), _v("a.0003", "unsafe", "AddField(m.x)")
UNKNOWN, CONTRACT = _v("b.0002", "unknown", "RunPython"), _v("c.0002", "contract")
PENDING = Inspection("", "", ("a.0002", "a.0003", "b.0002", "c.0002"),
                     (SAFE, UNSAFE, UNKNOWN, CONTRACT))
NO_UNSAFE = Inspection("", "", ("a.0002", "b.0002", "c.0002"), (SAFE, UNKNOWN, CONTRACT))
UNKNOWN_WARNING = "unknown migration operation: b.0002: RunPython: why"
UNSAFE_WARNING = "unsafe migration operation: a.0003: AddField(m.x): why; fix"


@pytest.mark.parametrize(("inspection", "mode", "first", "allow", "expect"), [
    # refuse: any unsafe operation stops the deploy in the gate
    (PENDING, "refuse", False, False,
     MigrationPolicy(refusal="1 migration operation would break the live release while it "
                     "serves on the new schema (docs/migrations.md):\n"
                     "  a.0003: AddField(m.x): why; fix", warnings=[UNKNOWN_WARNING])),
    # ...unless asked on purpose, or with warn: listed in the warnings
    (PENDING, "refuse", False, True,
     MigrationPolicy(warnings=[ALLOWED, UNSAFE_WARNING, UNKNOWN_WARNING],
                     before_switch=[("a", "0003"), ("b", "0002")], contract=["c.0002"])),
    (PENDING, "warn", False, False,
     MigrationPolicy(warnings=[UNSAFE_WARNING, UNKNOWN_WARNING],
                     before_switch=[("a", "0003"), ("b", "0002")], contract=["c.0002"])),
    # a first deploy has nothing to protect: all before the switch, nothing refused
    (PENDING, "refuse", True, False, MigrationPolicy(warnings=[UNKNOWN_WARNING])),
    # no unsafe operation: contract migrations are held for after the switch
    (NO_UNSAFE, "refuse", False, False,
     MigrationPolicy(warnings=[UNKNOWN_WARNING],
                     before_switch=[("a", "0002"), ("b", "0002")], contract=["c.0002"])),
    # off: nothing classed, one plain migrate
    (PENDING, "off", False, False, MigrationPolicy()),
    (Inspection("", "", ()), "refuse", False, False, MigrationPolicy()),
])
def test_policy_from_the_classes(inspection: Inspection, mode: str, first: bool, allow: bool,
                                 expect: MigrationPolicy) -> None:
    """refuse / warn / off, first deploys and --allow-unsafe-migrations, as DESIGN 2a says."""
    assert decide(inspection, mode, first_deploy=first, allow_unsafe=allow) == expect


def test_contract_migrations_the_live_release_left_run_before_the_switch() -> None:
    """A contract migration left pending by the live release (12b failed or postponed) is
    safe before the next switch: a newer migration that depends on it (classed unsafe for
    that in the gate) no longer gets the deploy refused, and nothing is held for after."""
    removal = Verdict("c.0002", "DeleteModel(tag)", "unsafe", "removes what the old code may "
                      "still use, and c.0003 (which runs before the switch) depends on it",
                      "move the removal into a later deploy")
    inspection = Inspection("", "", ("c.0002", "c.0003"),
                            (removal, _v("c.0003", "safe", "AddField(visit.tag)")))
    assert decide(inspection, "refuse", first_deploy=False, allow_unsafe=False).refusal
    policy = decide(inspection, "refuse", first_deploy=False, allow_unsafe=False,
                    left=frozenset({"c.0002"}))
    assert policy == MigrationPolicy()  # one plain `migrate` before the switch runs both
    held = Inspection("", "", ("c.0002",), (CONTRACT,))
    assert decide(held, "refuse", first_deploy=False, allow_unsafe=False,
                  left=frozenset({"c.0002"})) == MigrationPolicy()


def test_only_the_live_release_leaves_contract_migrations() -> None:
    """After a rollback, the older live code may use what they remove: none count as left."""
    state = State(live="r2", contract_left={"release": "r2", "migrations": ["c.0002"]})
    assert state.left_by_live() == frozenset({"c.0002"})
    assert State.from_json(state.to_json()).left_by_live() == frozenset({"c.0002"})
    state.live = "r1"
    assert state.left_by_live() == frozenset()
