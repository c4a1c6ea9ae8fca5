"""Django management commands run in a release, through the release's own venv python."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from watcher.config import DjangoConfig
from watcher.errors import StepFailed
from watcher.parts.runner import Result, clean_env, run

MARK = "WATCHER-INSPECT "
# Runs inside `manage.py shell -c`, so the settings module is whatever manage.py sets.
_INSPECT = (
    "import json\n"
    "from django.conf import settings\n"
    "from django.db import connections, DEFAULT_DB_ALIAS\n"
    "from django.db.migrations.executor import MigrationExecutor\n"
    "ex = MigrationExecutor(connections[DEFAULT_DB_ALIAS])\n"
    "plan = ex.migration_plan(ex.loader.graph.leaf_nodes())\n"
    "from django.core.servers.basehttp import get_internal_wsgi_application\n"
    "get_internal_wsgi_application()\n"  # the WSGI module imports: Gunicorn will boot
    "storages = getattr(settings, 'STORAGES', {}) or {}\n"
    "backend = storages.get('staticfiles', {}).get('BACKEND', '')\n"
    "print(" + repr(MARK) + " + json.dumps({'static_root': str(settings.STATIC_ROOT or ''),"
    " 'static_backend': backend,"
    " 'pending': [m.app_label + '.' + m.name for m, back in plan if not back]}))\n"
)
LOCAL_STATIC = (
    "django.contrib.staticfiles.storage.StaticFilesStorage",
    "django.contrib.staticfiles.storage.ManifestStaticFilesStorage",
    "django.core.files.storage.FileSystemStorage",
    "",
)


@dataclass(frozen=True)
class Inspection:
    static_root: str
    static_backend: str
    pending: tuple[str, ...]

    def static_dir_in(self, release: Path) -> Path | None:
        """STATIC_ROOT when it lies inside the release and storage is local, else None."""
        if not self.static_root or self.static_backend not in LOCAL_STATIC:
            return None
        root = Path(self.static_root)
        try:
            rel = root.resolve().relative_to(release.resolve())
        except ValueError:
            return None
        return release / rel


class Django:
    def __init__(self, cfg: DjangoConfig, release: Path) -> None:
        self.cfg = cfg
        self.release = release

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

    def manage(self, *args: str, step: str, check: bool = True) -> Result:
        return run([str(self.python), self.cfg.manage, *args], step=step,
                   timeout=self.cfg.timeout, cwd=self.release, env=self.env(), check=check)

    def inspect(self, step: str = "check", *, gate: bool = False) -> Inspection:
        """STATIC_ROOT, the static storage and pending migrations, in one Django boot.

        With `gate`, the same process first runs the `check` command (with `--deploy` when
        configured): a system check error fails the step before anything is inspected. One
        boot instead of two saves about 0.4 s on every deploy.
        """
        script = _INSPECT
        if gate:
            script = (
                "from django.core.management import call_command\n"
                f"call_command('check', deploy={self.cfg.check_deploy!r})\n" + script
            )
        res = self.manage("shell", "--verbosity", "0", "-c", script, step=step)
        for line in reversed(res.output.splitlines()):
            if line.startswith(MARK):
                data = json.loads(line[len(MARK):])
                return Inspection(str(data["static_root"]), str(data["static_backend"]),
                                  tuple(data["pending"]))
        raise StepFailed(step, "could not read STATIC_ROOT and migrations from Django",
                         res.output)

    def migrate(self) -> Result:
        return self.manage("migrate", "--noinput", step="migrate")

    def collectstatic(self) -> Result:
        return self.manage("collectstatic", "--noinput", step="collectstatic")

    def hook(self, argv: tuple[str, ...], step: str, timeout: float) -> Result:
        return run(list(argv), step=step, timeout=timeout, cwd=self.release, env=self.env())
