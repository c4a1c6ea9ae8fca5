"""Fast checks of the shipped examples: process configs, watcher.toml and the Django app."""

from __future__ import annotations

import configparser
import grp
import json
import os
import pwd
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from supervisor.options import ServerOptions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the dev venv is 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MYSITE = EXAMPLES / "mysite"
SUPERVISOR = ROOT / "supervisor"
SYSTEMD = ROOT / "systemd"

# DESIGN §4, section by section.
DESIGN_KEYS: dict[str, set[str]] = {
    "app": {"name", "root", "keep_releases"},
    "git": {
        "remote",
        "branch",
        "ssh_key_file",
        "known_hosts_file",
        "token_file",
        "interval",
        "timeout",
        # issue 14
        "verify", "allowed_signers_file", "gpg_keys_file", "tag_pattern", "prereleases",
        "paths", "ignore_paths",
    },
    "build": {"python", "requirements", "installer", "pip_args", "shared"},
    "django": {"manage", "settings", "migrate", "collectstatic", "check_deploy"},
    "hooks": {"pre_switch", "post_switch"},
    "supervisor": {"url", "username", "password_file", "programs", "reload",
                   "workers"},
    "bluegreen": {"programs", "health_urls"},
    "health": {"url", "expect_revision", "timeout", "smoke_paths", "failures"},
    "report": {"url", "token_file", "format"},
    "webhook": {"listen", "secret_file"},
    "notify.email": {"smtp_url", "api_url", "username", "password_file", "sender", "to", "on"},
    "schedule": {"windows", "timezone"},  # issue 14
}


def _gunicorn_conf(path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Execute a gunicorn.conf.py the way Gunicorn does, with only `env` in GUNICORN_*."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("GUNICORN_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env or {})
    try:
        return runpy.run_path(str(path))
    finally:
        for key in env or {}:
            os.environ.pop(key, None)
        os.environ.update(saved)


def _ini(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=False)
    with path.open(encoding="utf-8") as f:
        parser.read_file(f)
    return parser


def _supervisor_tree(tmp_path: Path) -> Path:
    """Copy supervisord.conf and conf.d/ with every absolute path moved under tmp_path."""
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    (tmp_path / "log").mkdir()
    (tmp_path / "conf.d").mkdir()
    moves = {
        "/run/supervisor.sock": str(tmp_path / "supervisor.sock"),
        "/run/supervisord.pid": str(tmp_path / "supervisord.pid"),
        "/var/log/supervisor": str(tmp_path / "log"),
        "/etc/supervisor/conf.d": str(tmp_path / "conf.d"),
        "chown=deploy:deploy": f"chown={user}:{group}",
        "user=deploy": f"user={user}",
        "user=mysite": f"user={user}",
    }
    sources = [SUPERVISOR / "supervisord.conf", *sorted((SUPERVISOR / "conf.d").glob("*.conf"))]
    for source in sources:
        text = source.read_text(encoding="utf-8")
        for old, new in moves.items():
            text = text.replace(old, new)
        (tmp_path / source.relative_to(SUPERVISOR)).write_text(text, encoding="utf-8")
    return tmp_path / "supervisord.conf"


def test_supervisor_configs_load_in_supervisord(tmp_path: Path) -> None:
    """Supervisord's own parser accepts the configs and sees both programs as intended."""
    options = ServerOptions()
    options.realize(args=["-c", str(_supervisor_tree(tmp_path))])

    assert options.parse_criticals == []
    assert options.serverurl == f"unix://{tmp_path / 'supervisor.sock'}"
    assert options.server_configs[0]["chmod"] == 0o700
    groups = {g.name: g for g in options.process_group_configs}
    assert set(groups) == {"mysite", "watcher"}
    mysite = groups["mysite"].process_configs[0]
    watcher = groups["watcher"].process_configs[0]
    for program in (mysite, watcher):
        assert program.stopsignal == 15
        assert program.stopasgroup and program.killasgroup
        assert program.autostart and program.autorestart
    assert (mysite.startsecs, mysite.stopwaitsecs) == (5, 30)
    assert (watcher.startsecs, watcher.stopwaitsecs) == (3, 60)
    assert watcher.command == "/opt/watcher/bin/watcher run --config /etc/watcher/watcher.toml"


def test_mysite_program_reloads_new_code_on_hup() -> None:
    """The Gunicorn program chdirs through the `current` symlink, never preloads, and drains."""
    program = _ini(SUPERVISOR / "conf.d" / "mysite.conf")["program:mysite"]
    argv = program["command"].split()
    gunicorn = _gunicorn_conf(MYSITE / "gunicorn.conf.py")

    assert argv[0] == "/srv/mysite/current/.venv/bin/gunicorn"
    assert argv[argv.index("--chdir") + 1] == "/srv/mysite/current"
    assert argv[argv.index("-c") + 1] == "/srv/mysite/current/gunicorn.conf.py"
    assert not any(arg.startswith("--preload") for arg in argv)
    assert "preload_app" not in gunicorn
    assert program["directory"] == "/srv/mysite/current"
    assert program["user"] == "mysite"
    assert int(program["startsecs"]) >= 5
    assert int(program["stopwaitsecs"]) > gunicorn["graceful_timeout"]
    assert program["stopsignal"] == "TERM"
    assert program["stopasgroup"] == program["killasgroup"] == "true"


def test_the_app_and_watcher_run_as_two_users() -> None:
    """Every shipped app program (plain, blue/green, full stack) runs as `mysite`, watcher
    (Supervisord or systemd) as `deploy`, which alone may open the control socket: a
    compromised app reads neither watcher's secrets nor its state (issue 11, item 12)."""
    apps = [*(SUPERVISOR / "conf.d-bluegreen").glob("*.conf"),
            SUPERVISOR / "conf.d" / "mysite.conf", SUPERVISOR / "conf.d-fullstack" / "mysite.conf"]
    for path in apps:
        for name, section in _ini(path).items():
            if name.startswith("program:"):
                assert section["user"] == "mysite", path
                assert 'USER="mysite"' in section["environment"], path
    watcher = _ini(SUPERVISOR / "conf.d" / "watcher.conf")["program:watcher"]
    assert watcher["user"] == "deploy"
    assert _ini(SYSTEMD / "watcher.service")["Service"]["User"] == "deploy"
    server = _ini(SUPERVISOR / "supervisord.conf")["unix_http_server"]
    assert (server["chmod"], server["chown"]) == ("0700", "deploy:deploy")
    guide = (ROOT / "docs" / "deploy-on-a-vps.md").read_text()
    for line in ("adduser --system --group --home /home/mysite", "usermod -aG mysite www-data",
                 "install -d -o deploy -g mysite -m 2750 /srv/mysite",
                 "install -m 0640 -o root -g mysite-env /dev/null /srv/mysite/shared/.env",
                 "d /run/mysite 0750 mysite www-data -"):
        assert line in guide


def test_gunicorn_conf_defaults_and_env() -> None:
    """gunicorn.conf.py binds loopback with 2 workers by default and obeys GUNICORN_*."""
    shipped = MYSITE / "gunicorn.conf.py"

    default = _gunicorn_conf(shipped)
    assert default["bind"] == "127.0.0.1:8000"
    assert default["workers"] == 2
    assert (default["timeout"], default["graceful_timeout"]) == (30, 20)
    assert default["wsgi_app"] == "mysite.wsgi:application"
    assert default["accesslog"] is None

    custom = _gunicorn_conf(
        shipped,
        {"GUNICORN_BIND": "127.0.0.1:8123", "GUNICORN_WORKERS": "3", "GUNICORN_ACCESS_LOG": "-"},
    )
    assert (custom["bind"], custom["workers"], custom["accesslog"]) == ("127.0.0.1:8123", 3, "-")


GUNICORN_CONFS = (MYSITE / "gunicorn.conf.py", EXAMPLES / "fullstack" / "gunicorn.conf.py",
                  ROOT / "watcher" / "init" / "templates" / "gunicorn.conf.py")
# Run in a fresh interpreter, with the example's settings importable: the block may import
# Django's own modules, never the settings or the app (that would be a preloaded app).
_PRELOAD_PROBE = """
import json, runpy, sys
conf = runpy.run_path(sys.argv[1])
from django.conf import settings
print(json.dumps({"preload": list(conf["DJANGO_PRELOAD"]), "configured": settings.configured,
                  "app": sorted(m for m in sys.modules if m.split(".")[0] in ("mysite", "pages")),
                  "wsgi": "django.core.handlers.wsgi" in sys.modules}))
"""


@pytest.mark.parametrize("conf", GUNICORN_CONFS, ids=lambda p: p.parent.name)
def test_gunicorn_conf_preloads_django_but_never_the_app(conf: Path) -> None:
    """The shipped gunicorn.conf.py files import Django's own modules in the master (so a
    worker added by a rolling reload boots fast) without reading the settings or importing
    any module of the app, and all three preload the same list, the warm gate's first."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mysite.settings", "PYTHONPATH": str(MYSITE)}
    res = subprocess.run([sys.executable, "-c", _PRELOAD_PROBE, str(conf)], cwd=MYSITE, env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    found = json.loads(res.stdout.splitlines()[-1])
    assert found["wsgi"] and found["configured"] is False and found["app"] == []
    shipped = runpy.run_path(str(GUNICORN_CONFS[0]))["DJANGO_PRELOAD"]
    assert tuple(found["preload"]) == shipped
    # The warm gate (a file of its own too: it runs in the app's venv) starts with the list.
    gate = runpy.run_path(str(ROOT / "watcher" / "parts" / "inrelease" / "warm_gate.py"))
    assert gate["PRELOAD"][:len(shipped)] == shipped


def test_watcher_toml_has_exactly_the_design_sections() -> None:
    """examples/watcher.toml has every section and key of DESIGN §4 and nothing else."""
    with (EXAMPLES / "watcher.toml").open("rb") as f:
        config = tomllib.load(f)

    sections = {
        f"{name}.{sub}" if name == "notify" else name: body
        for name, value in config.items()
        for sub, body in (value.items() if name == "notify" else [(None, value)])
    }
    assert {name: set(body) for name, body in sections.items()} == DESIGN_KEYS
    assert config["app"]["root"] == "/srv/mysite"
    assert config["build"]["shared"] == [".env", "data"]
    assert config["supervisor"]["programs"] == ["mysite"]
    assert config["health"]["url"] == "http://127.0.0.1:8000/healthz"


def test_systemd_units_run_the_right_commands() -> None:
    """The systemd units start watcher as deploy and supervisord in the foreground."""
    watcher = _ini(SYSTEMD / "watcher.service")
    supervisord = _ini(SYSTEMD / "supervisord.service")

    assert watcher["Service"]["ExecStart"] == (
        "/opt/watcher/bin/watcher run --config /etc/watcher/watcher.toml"
    )
    assert watcher["Service"]["User"] == "deploy"
    assert watcher["Service"]["Restart"] == "always"
    assert watcher["Service"]["NoNewPrivileges"] == "true"
    assert supervisord["Service"]["ExecStart"].endswith(
        "supervisord -n -c /etc/supervisor/supervisord.conf"
    )
    assert int(supervisord["Service"]["TimeoutStopSec"]) > 60


@pytest.fixture
def mysite_copy(tmp_path: Path) -> Path:
    """A fresh copy of the example app, as watcher would export it (no data/, no venv)."""
    app = tmp_path / "app"
    shutil.copytree(
        MYSITE,
        app,
        ignore=shutil.ignore_patterns("__pycache__", "data", "staticfiles", ".venv", ".env"),
    )
    return app


def _run_in_app(app: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MYSITE_", "GUNICORN_"))
    }
    env["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_mysite_healthz_reads_revision_and_env_without_a_database(mysite_copy: Path) -> None:
    """/healthz answers `ok <REVISION>` with no data/ dir, and .env fills unset settings."""
    (mysite_copy / "REVISION").write_text("0123456789abcdef\n")
    (mysite_copy / ".env").write_text(
        "# shared\nexport MYSITE_ALLOWED_HOSTS='testserver, example.com'\n"
        "DJANGO_SECRET_KEY=from-dotenv\n"
    )
    code = (
        "import django; django.setup()\n"
        "from django.conf import settings\n"
        "from django.db import connection\n"
        "from django.test import Client\n"
        "r = Client().get('/healthz')\n"
        "print(r.status_code, r['Content-Type'], repr(r.content.decode()))\n"
        "print(settings.DEBUG, settings.SECRET_KEY, settings.ALLOWED_HOSTS)\n"
        "print(connection.connection is None)\n"
    )
    result = _run_in_app(mysite_copy, code)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "200 text/plain; charset=utf-8 'ok 0123456789abcdef\\n'",
        "False from-dotenv ['127.0.0.1', 'localhost', 'testserver', 'example.com']",
        "True",
    ]
    assert not (mysite_copy / "data").exists()


def test_mysite_passes_check_and_its_migrations_match_the_models(mysite_copy: Path) -> None:
    """`manage.py check` passes and the checked-in migrations leave nothing to make."""
    (mysite_copy / "data").mkdir()
    code = (
        "from django.core.management import execute_from_command_line as run\n"
        "run(['manage.py', 'check'])\n"
        "run(['manage.py', 'makemigrations', '--check', '--dry-run'])\n"
    )
    result = _run_in_app(mysite_copy, code)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes detected" in result.stdout
