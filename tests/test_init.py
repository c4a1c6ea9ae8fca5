"""`watcher init`: the templates, what it reads from a checkout, how it asks and refuses, and
the files it writes started for real (Supervisord, Nginx, Gunicorn, MariaDB) and deployed."""

from __future__ import annotations

import hashlib
import hmac
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.initsite import Sandboxed
from support.services import MariaDB, Redis
from support.site import REPO_ROOT, commit_and_push, git, log_events, make_remote

from watcher.config_load import load
from watcher.init.detect import read_checkout
from watcher.init.render import TemplateError, render
from watcher.init.site import Site, files

EXAMPLES = REPO_ROOT / "examples"
DB_PASSWORD = "canary-init-db-pass-77c1"  # must stay in shared/.env


def init(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m watcher init *argv` off a TTY (stdin closed), without WATCHER_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    return subprocess.run([sys.executable, "-m", "watcher", "init", *argv], cwd=cwd or REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)


def written(outdir: Path) -> list[str]:
    return sorted(str(p.relative_to(outdir)) for p in outdir.rglob("*") if p.is_file())


@pytest.fixture
def base() -> Iterator[Path]:
    """A short temp dir (unix socket paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="wi", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- templates ------------------------------------------------------------------------
def test_shipped_files_are_rendered_from_the_templates() -> None:
    """supervisor/, systemd/, examples/nginx/ and examples/watcher.toml are the templates
    rendered with the example values, byte for byte (`make shipped` rewrites them)."""
    res = subprocess.run([sys.executable, "scripts/shipped.py", "--check"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(("text", "error"), [
    ("a {{missing}}\n", "no value for 'missing'"),
    ("{% if flag %}\nx\n", "if without endif"),
    ("{% endif %}\n", "endif without if"),
    ("{% if nope %}\n{{x}}\n{% endif %}\n", "no value for 'nope'"),
    ("{% if flag %}\n{{typo}}\n{% endif %}\n", "no value for 'typo'"),  # untaken, still checked
    ("x {% if flag %} y\n", "malformed directive"),
])
def test_render_refuses_what_it_cannot_fill(text: str, error: str) -> None:
    """A name the values lack (even in a branch not taken) or an unbalanced block is an
    error naming the line, never an empty string in an installed file."""
    with pytest.raises(TemplateError, match=error):
        render(text, {"flag": False, "x": "1"})


def test_render_decides_blocks_and_fills_names() -> None:
    """Nested if/else blocks keep only the taken lines; `{{name}}` is filled; `$host` stays."""
    text = ("{% if a %}\nA {{v}}\n{% if not b %}\nnot b\n{% else %}\nb\n{% endif %}\n"
            "{% else %}\nno a\n{% endif %}\nproxy_set_header Host $host;\n")
    assert render(text, {"a": True, "b": False, "v": "x"}) == (
        "A x\nnot b\nproxy_set_header Host $host;\n")
    assert render(text, {"a": False, "b": True, "v": "x"}) == (
        "no a\nproxy_set_header Host $host;\n")


# -- reading a checkout ---------------------------------------------------------------
def test_from_checkout_reads_the_fullstack_example() -> None:
    """--from-checkout finds the settings and WSGI modules, requirements, STATIC_ROOT inside
    the release, the shared .env and media/, the /healthz view and gunicorn.conf.py."""
    found = read_checkout(EXAMPLES / "fullstack").values

    assert (found["settings"], found["wsgi"], found["app"]) == (
        "mysite.settings", "mysite.wsgi", "mysite")
    assert found["requirements"] == ("requirements.txt",)
    assert (found["static_root"], found["static_url"]) == ("staticfiles", "/static/")
    assert found["shared"] == (".env", "media")
    assert found["healthz"] and found["gunicorn_conf"] and found["dotenv"]
    assert found["hosts_setting"] == "MYSITE_ALLOWED_HOSTS"
    assert "remote" not in found  # examples/fullstack is not the top of its own git tree


def test_from_checkout_reads_other_layouts(tmp_path: Path) -> None:
    """A settings package, requirements chained with -r, STATIC_ROOT outside the release,
    Celery with beat, no gunicorn.conf.py: each lands in the files init writes."""
    app = tmp_path / "shop"
    (app / "shop" / "settings").mkdir(parents=True)
    (app / "requirements").mkdir()
    (app / "manage.py").write_text(
        'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings.production")\n')
    (app / "shop" / "settings" / "__init__.py").write_text("")
    (app / "shop" / "settings" / "production.py").write_text(
        'STATIC_ROOT = "/var/www/shop/static"\nSTATIC_URL = "/assets/"\n'
        'WSGI_APPLICATION = "shop.wsgi.application"\n'
        'CELERY_BEAT_SCHEDULE = {}\n')
    (app / "shop" / "wsgi.py").write_text(
        'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")\n')
    (app / "shop" / "celery.py").write_text("app = Celery('shop')\n")
    (app / "requirements" / "production.txt").write_text("-r base.txt\ngunicorn\n")
    (app / "requirements" / "base.txt").write_text("Django\ncelery\n")
    found = read_checkout(app)
    values = found.values

    assert values["requirements"] == ("requirements/production.txt", "requirements/base.txt")
    assert values["static_root"] == "/var/www/shop/static"
    assert (values["celery"], values["celery_beat"]) == ("shop", True)
    assert not values["gunicorn_conf"] and not values["healthz"]

    outdir = tmp_path / "out"
    res = init(str(outdir), "--from-checkout", str(app), "--remote", str(tmp_path / "none"))
    assert res.returncode == 0, res.stderr
    out = written(outdir)
    assert {"supervisor/conf.d/shop_celery.conf", "gunicorn.conf.py"} <= set(out)
    celery = (outdir / "supervisor" / "conf.d" / "shop_celery.conf").read_text()
    assert ("[program:shop_celery]\n"
            "command=/srv/shop/current/.venv/bin/celery -A shop worker") in celery
    assert "[program:shop_celerybeat]" in celery
    nginx = (outdir / "nginx" / "shop.conf").read_text()
    assert "location /assets/ {\n        alias /var/www/shop/static/;" in nginx
    program = (outdir / "supervisor" / "conf.d" / "shop.conf").read_text()
    # wsgi.py would pick shop.settings: the programs are told the production module.
    assert 'DJANGO_SETTINGS_MODULE="shop.settings.production"' in program
    cfg = load(outdir / "watcher.toml", environ={})
    assert cfg.build.requirements == ("requirements/production.txt", "requirements/base.txt")
    assert cfg.supervisor.workers == ("shop_celery", "shop_celerybeat")
    assert cfg.health.url == "http://127.0.0.1:8000/" and not cfg.health.expect_revision
    steps = (outdir / "NEXT-STEPS.md").read_text()
    assert "STATIC_ROOT is outside the release" in steps and "gunicorn.conf.py" in steps


# -- the command ----------------------------------------------------------------------
def test_init_writes_the_set_and_checks_it(tmp_path: Path) -> None:
    """init writes watcher.toml, the programs, the Nginx site, systemd units and
    NEXT-STEPS.md, then validates them like `watcher check` (soft where nothing exists)."""
    outdir = tmp_path / "site"
    res = init(str(outdir), "--from-checkout", "examples/fullstack",
               "--remote", "git@github.com:acme/mysite.git", "--root", "/srv/mysite")

    assert res.returncode == 0, res.stdout + res.stderr
    assert written(outdir) == [
        "NEXT-STEPS.md", "nginx/mysite.conf", "supervisor/conf.d/mysite.conf",
        "supervisor/conf.d/mysite_celery.conf",  # the example runs a Celery worker and beat
        "supervisor/conf.d/watcher.conf", "supervisor/supervisord.conf",
        "systemd/supervisord.service", "systemd/watcher.service", "tmpfiles.d/mysite.conf",
        "watcher.toml"]
    assert f"ok    config: {outdir / 'watcher.toml'}" in res.stdout
    assert "ok    program mysite: --chdir /srv/mysite/current, no --preload" in res.stdout
    assert "ok    nginx site: nginx -t accepts mysite.conf" in res.stdout
    assert "FAIL" not in res.stdout
    # The single-program unix-socket site is the shipped full-stack set, names and all.
    shipped = (REPO_ROOT / "supervisor" / "conf.d-fullstack" / "mysite.conf").read_text()
    ours = (outdir / "supervisor" / "conf.d" / "mysite.conf").read_text()
    assert ours.split("[program:mysite]")[1] == shipped.split("[program:mysite]")[1]
    ours = (outdir / "supervisor/conf.d/watcher.conf").read_text()
    shipped = (REPO_ROOT / "supervisor/conf.d/watcher.conf").read_text()
    assert ours.split("[program:watcher]")[1] == shipped.split("[program:watcher]")[1]
    assert "user=mysite\n" in (outdir / "supervisor/conf.d/mysite.conf").read_text()
    cfg = load(outdir / "watcher.toml", environ={})
    assert cfg.build.shared == (".env", "media") and cfg.django.settings == "mysite.settings"
    assert cfg.git.ssh_key_file == "/etc/watcher/deploy_key"
    steps = (outdir / "NEXT-STEPS.md").read_text()
    order = ["adduser", "shared/.env", "webhook_secret", "deploy_key",
             "https://example.com/hooks/github", "watcher check", "watcher --once"]
    assert [steps.index(word) for word in order] == sorted(steps.index(w) for w in order)


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    """A second init over existing files writes nothing and names them (exit 2); --force
    rewrites them."""
    args = (str(tmp_path), "--app", "mysite", "--remote", str(tmp_path / "none"))
    assert init(*args).returncode == 0
    toml = tmp_path / "watcher.toml"
    toml.write_text("# edited by hand\n")

    again = init(*args)
    assert again.returncode == 2
    assert "watcher.toml" in again.stderr and "--force" in again.stderr
    assert toml.read_text() == "# edited by hand\n"

    forced = init(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert toml.read_text().startswith("# watcher configuration for mysite")


def test_init_off_a_tty_names_the_missing_flag(tmp_path: Path) -> None:
    """Without a terminal a missing required value is a usage error naming its flag."""
    res = init(str(tmp_path / "out"), "--app", "mysite")

    assert res.returncode == 2
    assert "--remote" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("flag", "value"), [
    ("--app", "my site"), ("--root", "srv/mysite"), ("--server-name", "a;b"),
    ("--settings", "mysite/settings"),
])
def test_init_refuses_a_bad_value_naming_its_flag(tmp_path: Path, flag: str, value: str) -> None:
    """A value that would break a written file is a usage error naming its flag; nothing
    is written."""
    argv = {"--app": "mysite", "--remote": "/nowhere", flag: value}
    res = init(str(tmp_path / "out"), *[x for kv in argv.items() for x in kv])

    assert res.returncode == 2
    assert flag in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pair", ["n", "y"])
def test_init_on_a_tty_asks_for_missing_values(tmp_path: Path, pair: str) -> None:
    """On a terminal each missing value is asked for, with its default in brackets, and
    whether to set up a blue/green pair (an answer other than y or n is asked again)."""
    outdir = tmp_path / "out"
    answers = ("shop\n\nhttps://git.example.com/acme/shop.git\n\n\n\nshop.example.com\n"
               f"maybe\n{pair}\n")
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    proc = subprocess.Popen([sys.executable, "-m", "watcher", "init", str(outdir)],
                            stdin=secondary, stdout=secondary, stderr=secondary, env=env,
                            cwd=tmp_path)
    os.close(secondary)
    os.write(primary, answers.encode())
    output = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    os.close(primary)
    text = output.decode(errors="replace")

    assert proc.wait(timeout=30) == 0, text
    for prompt in ("App name", "App root (releases, venvs, shared) [/srv/shop]",
                   "Git remote to deploy from:", "Branch to deploy [main]",
                   "Django settings module [shop.settings]", "WSGI module [shop.wsgi]",
                   "Blue/green pair, so a requirements change drops no request", "y or n, please"):
        assert prompt in text
    cfg = load(outdir / "watcher.toml", environ={})
    assert (cfg.app.name, str(cfg.app.root), cfg.git.remote) == (
        "shop", "/srv/shop", "https://git.example.com/acme/shop.git")
    assert cfg.git.token_file == "/etc/watcher/git_token" and not cfg.git.ssh_key_file
    assert (cfg.bluegreen is not None) == (pair == "y")
    assert "server_name shop.example.com;" in (outdir / "nginx" / "shop.conf").read_text()


def test_settings_and_wsgi_flags_reach_the_programs() -> None:
    """--settings and --wsgi other than the app's own defaults go into the program's
    environment and Gunicorn's command line (a HUP re-reads both)."""
    site = Site(app="mysite", root="/srv/mysite", remote="r", settings="mysite.settings_prod",
                wsgi="mysite.wsgi_prod", settings_env=True, wsgi_arg=True, bluegreen=True)
    out = files(site)
    for colour, port in (("blue", 8001), ("green", 8002)):
        program = out[f"supervisor/conf.d/mysite_{colour}.conf"]
        assert (f"gunicorn.conf.py --bind 127.0.0.1:{port} --bind unix:/srv/mysite/run/"
                f"{colour}.sock mysite.wsgi_prod:application\n") in program
        assert ('DJANGO_SETTINGS_MODULE="mysite.settings_prod",'
                f'GUNICORN_PROC_NAME="mysite_{colour}"') in program


def test_bluegreen_publishes_one_socket_to_nginx(tmp_path: Path) -> None:
    """init --bluegreen: each colour binds its port and its own socket under the root, the
    config names them and the published link, and Nginx's upstream is that link alone (the
    two-port upstream only commented out), so Nginx reaches no colour watcher has not
    checked."""
    site = Site(app="shop", root="/srv/shop", remote="git@x:a/b.git", bluegreen=True,
                app_user="shop")
    out = files(site)
    for colour, port in (("blue", 8001), ("green", 8002)):
        program = out[f"supervisor/conf.d/shop_{colour}.conf"]
        assert (f"command=/srv/shop/current/.venv/bin/gunicorn --chdir /srv/shop/current "
                f"-c /srv/shop/current/gunicorn.conf.py --bind 127.0.0.1:{port} "
                f"--bind unix:/srv/shop/run/{colour}.sock\n") in program
        assert "GUNICORN_BIND" not in program.split(f"[program:shop_{colour}]")[1]
    nginx = out["nginx/shop.conf"]
    upstream = nginx[nginx.index("upstream shop_app {"):nginx.index("}", nginx.index("upstream"))]
    active = [ln.strip() for ln in upstream.splitlines()[1:] if not ln.strip().startswith("#")]
    assert active == ["server unix:/srv/shop/run/live.sock max_fails=0;"] * 2
    assert "# server 127.0.0.1:8001 max_fails=3 fail_timeout=1s;" in upstream
    assert "proxy_next_upstream_tries 2;" in nginx
    path = tmp_path / "watcher.toml"
    path.write_text(out["watcher.toml"])
    bg = load(path, environ={}).bluegreen
    assert bg is not None
    assert bg.sockets == ("/srv/shop/run/blue.sock", "/srv/shop/run/green.sock")
    assert bg.publish == "/srv/shop/run/live.sock"
    # Two users: Gunicorn (shop) creates the sockets, watcher (deploy) the link, in one dir.
    assert "install -d -o deploy -g shop -m 2770 /srv/shop/run" in out["NEXT-STEPS.md"]


# -- the generated files, running --------------------------------------------------------
def _served(box: Sandboxed, sha: str, timeout: float, port: int | None = None) -> str:
    """Poll /healthz through Nginx until it names `sha`; what it said last."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        status, body = box.get("/healthz", port)
        seen = f"{status} {body.strip()}"
        if status == 200 and body.split()[-1] == sha:
            return sha
        time.sleep(0.5)
    return seen


@pytest.mark.slow
def test_generated_bluegreen_site_deploys_itself_and_takes_a_webhook(base: Path) -> None:
    """init --from-checkout examples/mysite --bluegreen: the generated supervisord runs the
    pair and `watcher run`, which deploys by itself; a signed webhook through the generated
    Nginx deploys the next push."""
    _, work = make_remote(base, EXAMPLES / "mysite")
    outdir, root = base / "etc", base / "app"
    res = init(str(outdir), "--from-checkout", str(work), "--bluegreen", "--root", str(root),
               "--python", sys.executable)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok    remote" in res.stdout  # read from the checkout's origin, and reachable
    (root / "shared").mkdir(parents=True)  # NEXT-STEPS 1 and 2: the dirs and the secrets
    (root / "shared" / ".env").write_text("DJANGO_SECRET_KEY=init-test-secret-key\n")

    with Sandboxed(base, outdir) as box:
        first = git("rev-parse", "HEAD", cwd=work)
        assert _served(box, first, 240) == first, box.log("watcher")
        check = subprocess.run([sys.executable, "-m", "watcher", "check", "--config",
                                str(outdir / "watcher.toml")], capture_output=True, text=True,
                               timeout=120, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "warn  program" not in check.stdout

        second = commit_and_push(work, {"NOTES.md": "second\n"}, "A second commit")
        body = b'{"ref": "refs/heads/main"}'
        mac = hmac.new(b"init-test-webhook-secret", body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(
            f"{box.nginx.url}/hooks/generic", data=body, method="POST",  # type: ignore[union-attr]
            headers={"Content-Type": "application/json", "X-Signature": f"sha256={mac}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 202
        assert _served(box, second, 120) == second, box.log("watcher")
        events = log_events(box.log("watcher"))
        assert any(e.get("event") == "webhook.accepted" and e.get("forge") == "generic"
                   for e in events), box.log("watcher")
        assert box.get("/metrics")[0] == 404  # only /hooks/ of watcher's listener is public


@pytest.mark.slow
def test_generated_fullstack_site_deploys_with_mariadb_and_redis(base: Path) -> None:
    """init --from-checkout examples/fullstack: the generated program on a unix socket, the
    generated Nginx site (static files, loopback health server) and `watcher --once` with the
    generated config deploy the full-stack app against real MariaDB and Redis."""
    _, work = make_remote(base, EXAMPLES / "fullstack")
    outdir, root = base / "etc", base / "app"
    db, redis = MariaDB(base / "db"), Redis(base / "redis")
    try:
        db.start()
        db.create_database("mysite", "mysite", DB_PASSWORD)
        redis.start()
        res = init(str(outdir), "--from-checkout", str(work), "--root", str(root),
                   "--python", sys.executable)
        assert res.returncode == 0, res.stdout + res.stderr
        (root / "shared" / "media").mkdir(parents=True)
        env_file = root / "shared" / ".env"
        env_file.write_text(f"DJANGO_SECRET_KEY=init-fullstack-secret-0123456789abcdef\n"
                            f"MYSITE_DB_PASSWORD={DB_PASSWORD}\nMYSITE_DB_SOCKET={db.socket}\n"
                            f"MYSITE_REDIS_URL={redis.url}\n")
        env_file.chmod(0o600)
        with Sandboxed(base, outdir, watcher_autostart=False) as box:
            once = subprocess.run(
                [sys.executable, "-m", "watcher", "--once", "--config",
                 str(outdir / "watcher.toml")], capture_output=True, text=True, timeout=400,
                env={k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")},
                check=False)
            assert once.returncode == 0, once.stdout + once.stderr[-3000:] + box.log("mysite")
            sha = git("rev-parse", "HEAD", cwd=work)
            assert _served(box, sha, 30, port=box.ports["8000"]) == sha
            status, page = box.get("/")
            assert status == 200, page[-2000:]
            assert box.get("/static/pages/site.css")[0] == 200  # STATIC_ROOT in the release
            assert DB_PASSWORD not in once.stdout + once.stderr
    finally:
        redis.stop()
        db.stop()


def test_every_key_is_in_watcher_toml_and_real(tmp_path: Path) -> None:
    """The watcher.toml init writes names every key of DESIGN §4, set or commented out; with
    every commented-out line turned on it still loads (no key there is misspelt)."""
    text = files(Site(app="mysite", root="/srv/mysite", remote="git@x:a/b.git"))["watcher.toml"]
    on = re.sub(r"^# (\[[a-z.]+\]|[a-z_]+ = )", r"\1", text, flags=re.M)
    path = tmp_path / "watcher.toml"
    path.write_text(on)
    cfg = load(path, environ={})
    assert cfg.forge is not None and cfg.fleet is not None
    for section, keys in DESIGN_KEYS.items():
        for key in keys:
            assert re.search(rf"^(# )?{key} = ", text.split(f"[{section}]", 1)[1], re.M), key


DESIGN_KEYS = {  # DESIGN §4, every key
    "app": ["name", "root", "keep_releases"],
    "git": ["remote", "branch", "ssh_key_file", "known_hosts_file", "token_file", "interval",
            "timeout", "verify", "allowed_signers_file", "gpg_keys_file", "tag_pattern",
            "prereleases", "paths", "ignore_paths"],
    "build": ["python", "requirements", "installer", "pip_args", "shared"],
    "django": ["manage", "settings", "migrate", "collectstatic", "check_deploy",
               "migration_safety"],
    "hooks": ["pre_switch", "post_switch"],
    "supervisor": ["url", "username", "password_file", "programs", "reload", "workers"],
    "bluegreen": ["programs", "health_urls"],
    "health": ["url", "expect_revision", "timeout", "smoke_paths", "failures"],
    "report": ["url", "token_file", "format"],
    "webhook": ["listen", "secret_file"],
    "notify.email": ["smtp_url", "api_url", "username", "password_file", "sender", "to", "on"],
    "forge": ["type", "api_url", "repo", "token_file", "environment", "target_url"],
    "schedule": ["windows", "timezone"],
    "fleet": ["redis_url", "password_file", "host", "max_parallel", "lease"],
}
