"""Django management commands run in a release, through the release's own venv python.

`Django.inspect` is the gate's one Django boot (`_INSPECT` below, plus the in-release files
of `inrelease/`); what it and the other commands find is read into `django_findings`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from watcher.config import DjangoConfig
from watcher.errors import StepFailed
from watcher.parts import warm_gate
from watcher.parts.django_findings import (
    INRELEASE,
    Inspection,
    Reversal,
    SmokeReport,
    SmokeSpec,
    Verdict,
)
from watcher.parts.runner import Child, Result, clean_env, run

log = structlog.get_logger()
MARK = "WATCHER-INSPECT "
SMOKE_STARTED = "WATCHER-SMOKE-GET "  # inrelease/smoke.py prints it before each request
CLASSES_PY = str(INRELEASE / "migration_classes.py")
_REVERSE = (  # `OUT` and `LEAVES` are put in front
    "import json\n"
    "from django.db import connections, DEFAULT_DB_ALIAS\n"
    "from django.db.migrations.executor import MigrationExecutor\n"
    "_mr = {'__name__': 'watcher_migration_reverse'}\n"
    "exec(compile(open(" + repr(str(INRELEASE / "migration_reverse.py")) + ").read(),"
    " 'migration_reverse.py', 'exec'), _mr)\n"
    "ex = MigrationExecutor(connections[DEFAULT_DB_ALIAS])\n"
    "open(OUT, 'w').write(json.dumps(_mr['reversal'](ex, LEAVES)))\n"
)
# Runs inside `manage.py shell -c`, so the settings module is whatever manage.py sets;
# `inspect` puts `CLASSIFY = True|False` and `OUT = <a temp file's path>` in front.
_INSPECT = (
    "import json\n"
    "from django.conf import settings\n"
    "from django.db import connections, DEFAULT_DB_ALIAS\n"
    "from django.db.migrations.executor import MigrationExecutor\n"
    "ex = MigrationExecutor(connections[DEFAULT_DB_ALIAS])\n"
    "plan = ex.migration_plan(ex.loader.graph.leaf_nodes())\n"
    "from django.core.servers.basehttp import get_internal_wsgi_application\n"
    "get_internal_wsgi_application()\n"  # the WSGI module imports: Gunicorn will boot
    "_smoke = globals().get('watcher_smoke')\n"  # step 9a in this boot: see SmokeSpec
    "storages = getattr(settings, 'STORAGES', {}) or {}\n"
    "backend = storages.get('staticfiles', {}).get('BACKEND', '')\n"
    # Migration classes (DESIGN 2a), into a file: the output is kept only as a tail.
    "_mc = {'__name__': 'watcher_migration_classes'}\n"
    "exec(compile(open(" + repr(CLASSES_PY) + ").read(), 'migration_classes.py', 'exec'), _mc)\n"
    "open(OUT, 'w').write(json.dumps({'migrations': _mc['classify'](ex, plan) if CLASSIFY"
    " else [], 'leaves': _mc['leaves'](ex.loader)}))\n"
    "print(" + repr(MARK) + " + json.dumps({'static_root': str(settings.STATIC_ROOT or ''),"
    " 'static_backend': backend,"
    " 'smoke': _smoke([m.app_label for m, back in plan if not back]) if _smoke else None,"
    " 'pending': [m.app_label + '.' + m.name for m, back in plan if not back]}))\n"
)

class Django:
    def __init__(self, cfg: DjangoConfig, release: Path, gates: Path | None = None) -> None:
        """`gates`: the state directory, where a warm gate may wait for the gate's boot
        (`parts/warm_gate.py`); None runs every boot cold."""
        self.cfg = cfg
        self.release = release
        self.gates = gates

    @property
    def python(self) -> Path:
        return self.release / ".venv" / "bin" / "python"

    def env(self) -> dict[str, str]:
        venv_bin = self.release / ".venv" / "bin"
        extra = {"VIRTUAL_ENV": str(self.release / ".venv")}
        env = clean_env(extra)
        env["PATH"] = f"{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}"
        env.pop("PYTHONHOME", None)
        if self.cfg.settings:
            env["DJANGO_SETTINGS_MODULE"] = self.cfg.settings
        return env

    def manage(self, *args: str, step: str, check: bool = True, warm: bool = False) -> Result:
        """`warm`: hand the run to a warm gate of this venv when one waits."""
        handoff = self._hand if warm and self.gates is not None and self.cfg.warm_gate else None
        return run([str(self.python), self.cfg.manage, *args], step=step,
                   timeout=self.cfg.timeout, cwd=self.release, env=self.env(), check=check,
                   handoff=handoff)

    def _gate_key(self, env: Mapping[str, str]) -> str:
        return warm_gate.key(self.release / ".venv", env, self.release)

    def _hand(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> Child | None:
        if self.gates is None:
            return None
        return warm_gate.hand(self.gates, self._gate_key(env), argv, cwd, env)

    def stop_warm(self) -> None:
        if self.gates is not None:
            warm_gate.stop(self.gates)

    def warm_later(self, venv: Path, marker: Path) -> None:
        """After a deploy of this release: a warm gate of its venv (`venv`, the directory its
        `.venv` links to) for the next deploy's boot, for at most `django.warm_gate` (0
        starts none) and no longer than `marker` (the venv's completion mark) exists."""
        if self.gates is None or not self.cfg.warm_gate:
            return
        env = self.env()
        warm_gate.start_later(self.gates, venv / "bin" / "python", marker, env,
                              self._gate_key(env), self.cfg.warm_gate)

    def inspect(self, step: str = "check", *, gate: bool = False,
                classify: bool = False, smoke: SmokeSpec | None = None) -> Inspection:
        """STATIC_ROOT, the static storage and pending migrations, in one Django boot.

        With `gate`, the same process first runs the `check` command (with `--deploy` when
        configured): a system check error fails the step before anything is inspected. One
        boot instead of two saves about 0.4 s on every deploy. With `smoke`, the same boot
        also sends the smoke requests when no migration is pending (`Inspection.smoke`;
        judged by its `verdict`), or says why they must wait for `smoke()`.
        """
        script = f"CLASSIFY = {classify!r}\n" + (
            _INSPECT if smoke is None else smoke.prelude() + _INSPECT)
        if gate:
            script = (
                "from django.core.management import call_command\n"
                f"call_command('check', deploy={self.cfg.check_deploy!r})\n" + script
            )
        res, more = self._shell_json(script, step, smoke, warm=gate)
        for line in reversed(res.output.splitlines()):
            if line.startswith(MARK) and more is not None:
                data = json.loads(line[len(MARK):])
                verdicts = tuple(Verdict(str(v["migration"]), str(v["operation"]),
                                         str(v["class"]), str(v["why"]), str(v["fix"]))
                                 for v in more["migrations"])
                found = data.get("smoke")
                return Inspection(str(data["static_root"]), str(data["static_backend"]),
                                  tuple(data["pending"]), verdicts, dict(more["leaves"]),
                                  SmokeReport.from_json(found) if found else None)
        raise StepFailed(step, "could not read STATIC_ROOT and migrations from Django",
                         res.output)

    def _shell_json(self, script: str, step: str, smoke: SmokeSpec | None = None,
                    warm: bool = False) -> tuple[Result, Any]:
        """Run `script` in `manage.py shell`; what it wrote as JSON to the file `OUT` (None
        when it wrote nothing). A file, not stdout: the output is kept only as a tail."""
        with tempfile.TemporaryDirectory(prefix="watcher-django-") as tmp:
            out = Path(tmp) / "out.json"
            script = f"OUT = {str(out)!r}\n" + script
            res = self._shell(script, step, smoke, warm)
            try:
                return res, json.loads(out.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return res, None

    def smoke(self, spec: SmokeSpec, step: str = "smoke") -> SmokeReport:
        """Step 9a in a Django boot of its own (after migrate and collectstatic), for when
        the gate's boot could not send the smoke requests. Judge it with `verdict`."""
        script = (spec.prelude() + "import json\n"
                  f"print({MARK!r} + json.dumps(_ns['run'](watcher_smoke_spec)))\n")
        res = self._shell(script, step, spec)
        for line in reversed(res.output.splitlines()):
            if line.startswith(MARK):
                return SmokeReport.from_json(json.loads(line[len(MARK):]))
        raise StepFailed(step, "the smoke requests gave no answer", res.output)

    def _shell(self, script: str, step: str, smoke: SmokeSpec | None,
               warm: bool = False) -> Result:
        """`manage.py shell -c script`; a timeout while a smoke request was out is that
        request's failure (step "smoke"), naming its path."""
        try:
            return self.manage("shell", "--verbosity", "0", "-c", script, step=step, warm=warm)
        except StepFailed as exc:
            started = [line for line in exc.output_tail.splitlines()
                       if line.startswith(SMOKE_STARTED)]
            if smoke is None or not exc.timed_out or not started:
                raise
            path = started[-1][len(SMOKE_STARTED):]
            host = urlsplit(smoke.url).netloc.rpartition("@")[2]
            raise StepFailed("smoke", f"GET {path} (Host {host}) did not answer within "
                             f"django.timeout ({self.cfg.timeout:g}s); nothing was switched",
                             exc.output_tail, timed_out=True) from exc

    def migrate(self, app: str = "", target: str = "", step: str = "migrate", *,
                die_with_watcher: bool = False) -> Result:
        """`migrate --noinput`, or `migrate APP TARGET` (forwards or backwards).

        With `die_with_watcher` ([fleet]) it runs under util-linux's `setpriv --pdeathsig
        KILL`: a watcher killed mid-migration takes its migrate down with it, as a dying
        machine would, so when its lease runs out the server taking over runs the only
        migrate (each child leads its own session: killing the watcher's process group
        alone would leave it running)."""
        args = ("migrate", *(a for a in (app, target) if a), "--noinput")
        setpriv = shutil.which("setpriv") if die_with_watcher else None
        if setpriv is None:
            return self.manage(*args, step=step)
        return run([setpriv, "--pdeathsig", "KILL", "--", str(self.python), self.cfg.manage,
                    *args], step=step, timeout=self.cfg.timeout, cwd=self.release,
                   env=self.env())

    def reversal(self, leaves: dict[str, str], step: str = "migrate_back") -> Reversal:
        """What it takes to bring the schema back to a release that knew `leaves` (its
        newest migration per app), read from this (newer) release's migration files."""
        res, data = self._shell_json(f"LEAVES = {leaves!r}\n" + _REVERSE, step)
        if data is None:
            raise StepFailed(step, "could not read the migrations to reverse from Django",
                             res.output)
        return Reversal(tuple(data["migrations"]),
                        tuple((str(a), str(t)) for a, t in data["commands"]),
                        tuple(data["irreversible"]), tuple(data["problems"]))

    def collectstatic(self) -> Result:
        return self.manage("collectstatic", "--noinput", step="collectstatic")

    def hook(self, argv: tuple[str, ...], step: str, timeout: float) -> Result:
        return run(list(argv), step=step, timeout=timeout, cwd=self.release, env=self.env())
