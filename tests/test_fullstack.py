"""The whole stack, end to end: MariaDB, Redis, Nginx, Supervisord and Gunicorn on a unix
socket, the full-stack example app, SMTP and a logging API, with watcher run as a command.

Everything runs for real in one temp dir: Debian's mariadbd and redis-server (unix sockets
only), Nginx with the shipped `examples/nginx/mysite-fullstack.conf`, Supervisord with the
shipped `supervisor/conf.d-fullstack/mysite.conf` (paths moved into the sandbox). The
tests run in file order against one stack, each deploy building on the one before.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.logapi import LogAPI
from support.nginx import Nginx
from support.services import Mail, MariaDB, Redis, SMTPServer
from support.site import REPO_ROOT, commit_and_push, git, log_events, make_remote, wheelhouse
from support.supervisord import SupervisordProcess, free_port

pytestmark = pytest.mark.slow

FULLSTACK = REPO_ROOT / "examples" / "fullstack"
NGINX_CONF = REPO_ROOT / "examples" / "nginx" / "mysite-fullstack.conf"
PROGRAM_CONF = REPO_ROOT / "supervisor" / "conf.d-fullstack" / "mysite.conf"
WORKERS_CONF = REPO_ROOT / "supervisor" / "conf.d-fullstack" / "celery.conf"
DB_PASSWORD = "canary-db-pass-4e7a91c2d0"  # must never leave shared/.env
SMTP_PASSWORD = "canary-smtp-pass-5b0c8e"
REPORT_TOKEN = "canary-report-token-19af3"
CANARIES = (DB_PASSWORD, SMTP_PASSWORD, REPORT_TOKEN)


def _sub(text: str, old: str, new: str) -> str:
    """Replace `old` (which must be there: the shipped file changing shape fails loudly)."""
    if old not in text:
        raise AssertionError(f"{old!r} is no longer in the shipped config")
    return text.replace(old, new)


def render_nginx(port: int, health_port: int, hooks_port: int, root: Path, sock: Path) -> str:
    """The shipped server config with the sandbox's ports, app root and Gunicorn socket."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    text = re.sub(r"^\s*listen \[::\]:80;\n", "", text, flags=re.M)
    text = _sub(text, "listen 80;", f"listen 127.0.0.1:{port};")
    text = _sub(text, "listen 127.0.0.1:8000;", f"listen 127.0.0.1:{health_port};")
    text = _sub(text, "127.0.0.1:9090", f"127.0.0.1:{hooks_port}")
    text = _sub(text, "unix:/run/mysite/gunicorn.sock", f"unix:{sock}")
    return _sub(text, "/srv/mysite", str(root))


def render_program(root: Path, sock: Path, home: Path) -> str:
    """The shipped [program:mysite] body, run as the test's user, not started at boot."""
    body = PROGRAM_CONF.read_text(encoding="utf-8").split("[program:mysite]", 1)[1]
    lines = [ln for ln in body.strip().splitlines()
             if not ln.startswith(("user=", "stdout_logfile", ";"))]
    text = "\n".join(lines) + "\n"
    text = _sub(text, "unix:/run/mysite/gunicorn.sock", f"unix:{sock}")
    text = _sub(text, "/srv/mysite", str(root))
    text = _sub(text, "/home/mysite", str(home))
    return _sub(text, "autostart=true", "autostart=false")  # no release yet at boot


def render_workers(root: Path, home: Path) -> dict[str, str]:
    """The shipped [program:celery] and [program:celerybeat] bodies, moved into the sandbox
    and not started at boot (no release yet). The worker's grace before supervisord KILLs it
    is 30 s, not the shipped 330 s for a 5-minute task: the tests' tasks take seconds, and a
    worker stuck in its shutdown then costs the run half a minute, not the rest of it."""
    programs = {}
    for section in WORKERS_CONF.read_text(encoding="utf-8").split("[program:")[1:]:
        name, _, body = section.partition("]\n")
        lines = [ln for ln in body.strip().splitlines()
                 if ln.strip() and not ln.startswith(("user=", "stdout_logfile", ";"))]
        text = "\n".join(lines) + "\n"
        text = _sub(text, "/srv/mysite", str(root))
        text = _sub(text, "/home/mysite", str(home))
        if name == "celery":
            text = _sub(text, "stopwaitsecs=330", "stopwaitsecs=30")
        programs[name] = _sub(text, "autostart=true", "autostart=false")
    return programs


class Stack:
    """Every server of the full stack, started in order and stopped in reverse."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="fs", dir="/tmp"))  # short: socket paths
        self._stops: list[Any] = []
        self.outputs: list[str] = []  # every watcher run's stdout + stderr
        try:
            self._start()
        except BaseException:
            self.close()  # whatever did start is stopped: the fixture never sees this object
            raise

    def _start(self) -> None:
        self.root = self.base / "app"
        self.sock = self.base / "run" / "gunicorn.sock"
        self.sock.parent.mkdir(mode=0o750)  # like /run/mysite (0750 deploy:www-data)
        self.sock.parent.chmod(0o750)
        self.remote, self.work = make_remote(self.base, FULLSTACK)
        self.db = self._started(MariaDB(self.base / "db"))  # registered first: stopped even
        self.db.start()                                    # when start() itself fails
        self.db.create_database("mysite", "mysite", DB_PASSWORD)
        self.redis = self._started(Redis(self.base / "redis"))
        self.redis.start()
        self.bucket = self.base / "bucket"
        shared = self.root / "shared"
        shared.mkdir(parents=True)
        env = shared / ".env"
        env.write_text(
            "DJANGO_SECRET_KEY=fullstack-test-secret-key-0123456789abcdef\n"
            f"MYSITE_DB_PASSWORD={DB_PASSWORD}\n"
            f"MYSITE_DB_SOCKET={self.db.socket}\n"
            f"MYSITE_REDIS_URL={self.redis.url}\n")
        env.chmod(0o600)
        self.smtp = self._started(SMTPServer(users={"watcher": SMTP_PASSWORD},
                                             tls_dir=self.base))
        self.smtp.start()
        self.api = self._started(LogAPI(lifetime_s=900))
        self.hooks = self._started(LogAPI(lifetime_s=900))  # stands in for watcher's listener
        self.sv = self._started(SupervisordProcess(self.base / "sv", {
            "mysite": render_program(self.root, self.sock, self.base),
            **render_workers(self.root, self.base)}))
        self.sv.start()
        self.health_port = free_port()
        self.nginx = self._started(Nginx(self.base / "nginx", upstreams=[free_port()],
                                         root=self.root))
        (self.base / "nginx" / "site.conf").write_text(render_nginx(
            self.nginx.port, self.health_port, self.hooks.port, self.root, self.sock))
        self.nginx.start()
        self.url = self.nginx.url
        self.config = self._write_config()

    def _started(self, server: Any) -> Any:
        self._stops.append(server)
        return server

    def _write_config(self) -> Path:
        for name, secret in (("smtp_password", SMTP_PASSWORD), ("report_token", REPORT_TOKEN)):
            (self.base / name).write_text(secret + "\n")
        config = self.base / "watcher.toml"
        config.write_text(f"""
[app]
name = "mysite"
root = "{self.root}"
keep_releases = 3

[git]
remote = "{self.remote}"
branch = "main"
timeout = "30s"

[build]
python = "{sys.executable}"
pip_args = ["--no-index", "--find-links", "{wheelhouse()}"]
shared = [".env", "media"]

[supervisor]
url = "{self.sv.url}"
programs = ["mysite"]
start_timeout = "30s"

[health]
url = "http://127.0.0.1:{self.health_port}/healthz"
timeout = "20s"
interval = "0.2s"

[report]
url = "{self.api.url}"
token_file = "{self.base / 'report_token'}"
budget = "5s"

[notify.email]
smtp_url = "{self.smtp.url}"
username = "watcher"
password_file = "{self.base / 'smtp_password'}"
sender = "watcher@example.com"
to = ["ops@example.com"]
""")
        return config

    def close(self) -> None:
        for server in reversed(self._stops):
            (server.close if hasattr(server, "close") else server.stop)()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- the remote and watcher --------------------------------------------------------
    def commit(self, files: dict[str, str | None], message: str) -> str:
        return commit_and_push(self.work, files, message)

    def watcher(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
        env["SSL_CERT_FILE"] = str(self.smtp.cert)  # trust the SMTP server's own cert
        try:  # well inside pytest-timeout, so a run that hangs is shown, not just killed
            res = subprocess.run([sys.executable, "-m", "watcher", *args, "--config",
                                  str(self.config)], capture_output=True, text=True,
                                 timeout=240, env=env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"watcher {' '.join(args)} still running after 240s\n"
                                 f"{self.diagnosis(exc)}") from None
        self.outputs.append(res.stdout + res.stderr)
        return res

    def diagnosis(self, exc: subprocess.TimeoutExpired) -> str:
        """What watcher logged, what supervisord says of each program, the workers' logs."""
        out = exc.stderr or b""
        text = out.decode(errors="replace") if isinstance(out, bytes) else out
        states = [f"{p['name']}: {p['statename']} {p['description']}"
                  for p in self.sv.rpc().getAllProcessInfo()]
        return (f"watcher's log:\n{text[-4000:]}\nsupervisord:\n" + "\n".join(states)
                + f"\nworkers' logs:\n{celery_logs(self)[-3000:]}")

    def deploy(self, expect: int = 0) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        """`watcher --once`; the report the logging API got for it."""
        before = len(self.api.requests)
        res = self.watcher("--once")
        assert res.returncode == expect, res.stderr[-3000:]
        (req,) = self.api.requests[before:]
        report: dict[str, Any] = req.json
        return res, report

    def live(self) -> Path:
        return (self.root / "current").resolve()

    # -- through Nginx -------------------------------------------------------------------
    def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        url = f"http://127.0.0.1:{port}{path}" if port else self.url + path
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def served_sha(self) -> str:
        status, body = self.get("/healthz", self.health_port)
        return body.split()[-1] if status == 200 else f"HTTP {status}"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    made = Stack()
    try:
        yield made
    finally:
        made.close()


def steps(report: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["outcome"] for s in report["steps"]}


def events(res: subprocess.CompletedProcess[str]) -> list[str]:
    return [e["event"] for e in log_events(res.stderr + res.stdout)]


MIGRATION_0002 = '''from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]
    operations = [
        migrations.AddField("visit", "referrer",
                            models.CharField(max_length=200, null=True, blank=True)),
    ]
'''
MIGRATION_0003 = '''from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("pages", "0002_visit_referrer")]
    operations = [migrations.AddField("visit", "note", models.TextField(null=True))]
'''
MIGRATION_0004 = '''from django.db import migrations


def backfill(apps, schema_editor):
    {body}


class Migration(migrations.Migration):
    dependencies = [("pages", "0003_visit_note")]
    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
'''


def models_with(*fields: str) -> str:
    extra = "".join(f"    {f}\n" for f in fields)
    return ("from django.db import models\n\n\nclass Visit(models.Model):\n"
            '    """One request to the front page."""\n\n'
            "    created_at = models.DateTimeField(auto_now_add=True, db_index=True)\n"
            f"{extra}")


def test_first_deploy_creates_the_tables_in_mariadb(stack: Stack) -> None:
    """The first deploy builds the venv (mysqlclient, redis), migrates MariaDB and goes live."""
    _, report = stack.deploy()
    assert report["outcome"] == "succeeded"
    assert report["migrations_applied"][-1] == "pages.0001_initial"
    tables = stack.db.sql("SHOW TABLES FROM mysite").split()
    assert {"pages_visit", "django_migrations"} <= set(tables)
    assert stack.served_sha() == git("rev-parse", "HEAD", cwd=stack.work)
    assert stack.smtp.messages == []  # a success is not mailed


def test_a_page_through_nginx_writes_mysql_and_redis(stack: Stack) -> None:
    """GET / through Nginx and the Gunicorn socket adds a row in MariaDB and a Redis hit."""
    for _ in range(2):
        status, body = stack.get("/")
        assert status == 200, body
    assert 'Visits in MySQL: <span class="visits">2</span>' in body
    assert stack.db.sql("SELECT COUNT(*) FROM mysite.pages_visit") == "2"
    assert stack.redis.cli("GET", "mysite:1:pages:visits") == "2"
    assert stack.get("/visits") == (200, "mysql=2 redis=2\n")
    # Gunicorn's socket (mode 0777, umask 0) is guarded by its directory, as /run/mysite is.
    assert stat.S_ISSOCK(stack.sock.stat().st_mode)
    assert stack.sock.parent.stat().st_mode & 0o777 == 0o750


def test_nginx_proxies_hooks_with_a_body_limit(stack: Stack) -> None:
    """/hooks/ reaches watcher's listener; a body over 1 MiB is refused by Nginx (413)."""
    req = urllib.request.Request(stack.url + "/hooks/github", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202
    assert [r.path for r in stack.hooks.requests] == ["/hooks/github"]
    big = urllib.request.Request(stack.url + "/hooks/github", data=b"x" * (1024 * 1024 + 1),
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(big, timeout=10)
    assert info.value.code == 413
    assert len(stack.hooks.requests) == 1
    assert stack.get("/metrics")[0] == 404  # watcher's /metrics is not exposed: the app 404s


def test_static_files_are_served_from_the_live_release_after_a_code_only_deploy(
        stack: Stack) -> None:
    """Nginx serves /static/ from `current`; a code-only deploy carries the files over."""
    css = (FULLSTACK / "pages" / "static" / "pages" / "site.css").read_text()
    assert stack.get("/static/pages/site.css") == (200, css)
    old = stack.live()
    sha = stack.commit({"pages/templates/pages/index.html":
                        (stack.work / "pages/templates/pages/index.html").read_text()
                        .replace("<h1>mysite</h1>", "<h1>mysite, full stack</h1>")},
                       "Retitle the front page")
    res, report = stack.deploy()
    assert report["outcome"] == "succeeded" and steps(report)["reload"] == "ok"
    assert "collectstatic.carried" in events(res)
    assert stack.live() != old and stack.served_sha() == sha
    assert stack.get("/static/pages/site.css") == (200, css)
    new_file = stack.live() / "staticfiles" / "pages" / "site.css"
    assert new_file.stat().st_ino == (old / "staticfiles/pages/site.css").stat().st_ino
    assert "full stack" in stack.get("/")[1]


def test_a_migration_adding_a_column_deploys(stack: Stack) -> None:
    """A new nullable column is added in MariaDB and the new code serves."""
    stack.commit({"pages/models.py": models_with(
                      "referrer = models.CharField(max_length=200, null=True, blank=True)"),
                  "pages/migrations/0002_visit_referrer.py": MIGRATION_0002},
                 "Record the referrer")
    _, report = stack.deploy()
    assert report["migrations_applied"] == ["pages.0002_visit_referrer"]
    assert stack.db.sql("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE "
                        "TABLE_SCHEMA='mysite' AND TABLE_NAME='pages_visit' "
                        "AND COLUMN_NAME='referrer'") == "referrer"
    assert stack.get("/")[0] == 200


def test_a_migration_failing_after_its_ddl_keeps_the_old_release_and_says_so(
        stack: Stack) -> None:
    """MySQL DDL is not transactional: 0003 adds a column, 0004 raises; the old release keeps
    serving, exit 1, and the report and the mail name the migration that did run."""
    live, live_sha = stack.live(), stack.served_sha()
    before = len(stack.smtp.messages)
    stack.commit({"pages/models.py": models_with(
                      "referrer = models.CharField(max_length=200, null=True, blank=True)",
                      "note = models.TextField(null=True)"),
                  "pages/migrations/0003_visit_note.py": MIGRATION_0003,
                  "pages/migrations/0004_backfill.py": MIGRATION_0004.format(
                      body='raise RuntimeError("backfill of visit notes failed")')},
                 "Add notes and backfill them")
    _, report = stack.deploy(expect=1)
    assert report["outcome"] == "failed" and report["error"]["step"] == "migrate"
    assert report["migrations_applied"] == ["pages.0003_visit_note"]
    assert "the schema may be partly changed" in report["error"]["message"]
    assert "backfill of visit notes failed" in report["error"]["output_tail"]
    # The DDL of 0003 stayed: the column exists, yet the old code keeps serving and writing.
    assert "note" in stack.db.sql("SHOW COLUMNS FROM mysite.pages_visit").split()
    assert stack.live() == live and stack.served_sha() == live_sha
    assert stack.get("/")[0] == 200
    (mail,) = stack.smtp.wait_for(before + 1)[before:]
    check_failure_mail(mail)


def check_failure_mail(mail: Mail) -> None:
    assert mail.tls and mail.login == "watcher" and mail.rcpt_tos == ("ops@example.com",)
    assert "mysite deploy failed" in mail.message["Subject"]
    assert "pages.0003_visit_note" in mail.body
    assert "the schema may be partly changed" in mail.body


def test_the_fix_deploys_only_the_migration_that_did_not_run(stack: Stack) -> None:
    """Fixing 0004 deploys; 0003 is not run again."""
    sha = stack.commit({"pages/migrations/0004_backfill.py": MIGRATION_0004.format(
        body="apps.get_model('pages', 'Visit').objects.filter(note=None).update(note='')")},
        "Fix the backfill")
    _, report = stack.deploy()
    assert report["migrations_applied"] == ["pages.0004_backfill"]
    assert stack.served_sha() == sha


MIGRATION_0005 = '''from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("pages", "0004_backfill")]
    operations = [migrations.AddField("visit", "size", models.IntegerField(default=0))]
'''


def test_a_refused_migration_leaves_the_mariadb_schema_untouched(stack: Stack) -> None:
    """An unsafe AddField (NOT NULL, no db_default) stops the deploy in the gate: MariaDB's
    schema is untouched and the old code keeps writing (DESIGN 2a)."""
    live, live_sha = stack.live(), stack.served_sha()
    columns = stack.db.sql("SHOW COLUMNS FROM mysite.pages_visit")
    count = "SELECT COUNT(*) FROM mysite.pages_visit"
    fields = ("referrer = models.CharField(max_length=200, null=True, blank=True)",
              "note = models.TextField(null=True)")
    stack.commit({"pages/models.py": models_with(*fields, "size = models.IntegerField(default=0)"),
                  "pages/migrations/0005_visit_size.py": MIGRATION_0005}, "Count visit sizes")
    _, report = stack.deploy(expect=1)
    assert report["outcome"] == "failed" and report["error"]["step"] == "check"
    assert ("pages.0005_visit_size: AddField(visit.size): NOT NULL without db_default: the old "
            "code's INSERTs fail; add db_default=..., or null=True, and backfill in a later "
            "deploy") in report["error"]["message"]
    assert stack.db.sql("SHOW COLUMNS FROM mysite.pages_visit") == columns
    assert stack.live() == live and stack.served_sha() == live_sha
    before = int(stack.db.sql(count))
    assert stack.get("/")[0] == 200
    assert int(stack.db.sql(count)) == before + 1
    stack.commit({"pages/models.py": models_with(*fields),
                  "pages/migrations/0005_visit_size.py": None}, "Do not count sizes after all")


def test_static_files_on_a_cdn_bucket_are_collected_there_and_never_carried(
        stack: Stack) -> None:
    """With a remote static backend, collectstatic runs when static files change and writes
    to the bucket only; a code-only deploy neither runs it nor carries files over."""
    env = stack.root / "shared" / ".env"
    env.write_text(env.read_text() + f"MYSITE_STATIC_BUCKET_DIR={stack.bucket}\n")
    css = (stack.work / "pages/static/pages/site.css").read_text() + "h1 { color: teal; }\n"
    stack.commit({"pages/static/pages/site.css": css}, "Teal headings")
    _, report = stack.deploy()
    assert steps(report)["collectstatic"] == "ok"
    assert (stack.bucket / "pages" / "site.css").read_text() == css
    assert not (stack.live() / "staticfiles").exists()
    uploaded = (stack.bucket / "pages" / "site.css").stat().st_mtime_ns
    stack.commit({"pages/views.py": (stack.work / "pages/views.py").read_text() + "\n"},
                 "Code only")
    res, report = stack.deploy()
    assert steps(report)["collectstatic"] == "skipped"
    (skip,) = [e for e in log_events(res.stderr + res.stdout)
               if e["event"] == "step.skipped" and e.get("step") == "collectstatic"]
    assert "remote static storage" in skip["reason"]
    assert "collectstatic.carried" not in events(res)
    assert not (stack.live() / "staticfiles").exists()
    assert (stack.bucket / "pages" / "site.css").stat().st_mtime_ns == uploaded


# -- Celery workers (supervisor.workers, step 12b) ------------------------------------------
TASK_CODE_LINE = 'TASK_CODE = "v1"'


def enqueue(stack: Stack, key: str, seconds: float = 0.0) -> None:
    """Send pages.tasks.record(key, seconds) through the site's Redis broker."""
    from celery import Celery

    client = Celery(broker=f"redis+socket://{stack.redis.socket}?virtual_host=1")
    try:
        client.send_task("pages.tasks.record", args=[key, seconds])
    finally:
        client.close()


def redis_list(stack: Stack, key: str) -> list[dict[str, Any]]:
    out = stack.redis.cli("LRANGE", key, "0", "-1")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def task_event(stack: Stack, key: str, event: str, timeout: float = 60) -> dict[str, Any]:
    """The task's `event` ("started" or "done") record, waiting for it up to `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in redis_list(stack, "mysite:task-results"):
            if record["key"] == key and record["event"] == event:
                return record
        time.sleep(0.2)
    raise AssertionError(f"task {key} never {event}: {redis_list(stack, 'mysite:task-results')}")


def worker_events(stack: Stack) -> list[dict[str, Any]]:
    return redis_list(stack, "mysite:worker-events")


def celery_logs(stack: Stack) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in sorted((stack.base / "sv" / "logs").glob("celery*.log")))


def ready_events(stack: Stack, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The workers' "ready" records once there are `count` (a worker is RUNNING for
    supervisord after startsecs; it says ready once connected to the broker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = [e for e in worker_events(stack) if e["event"] == "ready"]
        if len(ready) >= count:
            return ready
        time.sleep(0.2)
    raise AssertionError(f"{count} ready events expected: {worker_events(stack)}\n"
                         f"{celery_logs(stack)[-3000:]}")


def step_end(res: subprocess.CompletedProcess[str], step: str) -> float:
    """When watcher logged the end of `step`, as a Unix time."""
    (event,) = [e for e in log_events(res.stderr + res.stdout)
                if e["event"] == "step.end" and e.get("step") == step]
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def test_workers_restart_warmly_after_health_onto_the_new_code(stack: Stack) -> None:
    """With supervisor.workers, a task running when the deploy starts finishes on the old
    code; the worker is stopped with TERM (a warm shutdown, never HUP) only after the web
    passed health, and a task enqueued after the deploy runs the new code."""
    config = stack.config.read_text()
    stack.config.write_text(_sub(config, 'programs = ["mysite"]\n',
                                 'programs = ["mysite"]\nworkers = ["celery", "celerybeat"]\n'))
    tasks = stack.work / "pages" / "tasks.py"
    assert TASK_CODE_LINE in tasks.read_text()
    stack.commit({"pages/views.py": (stack.work / "pages/views.py").read_text() + "\n"},
                 "Start the workers")
    res, report = stack.deploy()
    names = list(steps(report))
    assert names.index("workers") == names.index("health") + 1, names
    (first,) = ready_events(stack, 1)
    assert first["at"] > step_end(res, "health")  # started once the web was healthy
    enqueue(stack, "warm-up")
    assert task_event(stack, "warm-up", "done")["code"] == "v1"

    # Long enough to be running still when the deploy reaches its workers step (seconds
    # after it starts), short of the sandbox's 30 s stopwaitsecs: the warm shutdown waits.
    enqueue(stack, "long", seconds=20)
    running = task_event(stack, "long", "started")
    sha = stack.commit({"pages/tasks.py": tasks.read_text().replace(
        TASK_CODE_LINE, 'TASK_CODE = "v2"')}, "Tasks: version 2")
    res, report = stack.deploy()
    assert report["outcome"] == "succeeded" and steps(report)["workers"] == "ok"
    assert stack.served_sha() == sha
    long_done = task_event(stack, "long", "done")
    assert (long_done["code"], long_done["pid"]) == ("v1", running["pid"])  # old code, finished
    enqueue(stack, "after")
    assert task_event(stack, "after", "done")["code"] == "v2"
    ready = ready_events(stack, 2)
    events = worker_events(stack)
    assert len(ready) == 2 and ready[-1]["at"] > step_end(res, "health")
    assert ready[-1]["at"] > long_done["at"]  # the new worker came after the task finished
    shutdowns = [e for e in events if e["event"] == "shutdown"]
    assert [(e["pid"], e["sig"], e["how"]) for e in shutdowns] == [
        (first["pid"], "SIGTERM", "Warm")]
    assert shutdowns[0]["at"] < long_done["at"]  # TERM came mid-task; the task still finished
    logs = celery_logs(stack)
    assert "Restarting celery worker" not in logs and "SIGHUP" not in logs
    assert "supervisor.hup" not in [
        e["event"] for e in log_events(res.stderr) if e.get("program") in ("celery",
                                                                           "celerybeat")]


def test_a_worker_that_fails_to_start_rolls_the_deploy_back(stack: Stack) -> None:
    """A Celery app module that breaks the workers (the web never imports it) passes health
    but the workers never reach RUNNING: the deploy rolls back, the report names the worker,
    the old release serves and the workers run the old code again."""
    live, live_sha = stack.live(), stack.served_sha()
    app = (stack.work / "mysite" / "celery.py").read_text()
    bad = stack.commit({"mysite/celery.py": 'raise RuntimeError("broken celery app")\n' + app},
                       "A Celery app that cannot be imported")
    _, report = stack.deploy(expect=1)
    assert (report["outcome"], report["to_sha"]) == ("rolled_back", bad)
    assert report["error"]["step"] == "workers"
    assert "celery" in report["error"]["message"], report["error"]
    taken = steps(report)
    assert (taken["health"], taken["workers"]) == ("ok", "failed")
    assert taken["rollback_workers"] == "ok"
    assert stack.live() == live and stack.served_sha() == live_sha
    enqueue(stack, "after-rollback")
    assert task_event(stack, "after-rollback", "done")["code"] == "v2"
    state = stack.sv.rpc().getProcessInfo("celery")
    assert state["statename"] == "RUNNING"


def test_a_rollback_by_hand_restarts_the_workers_onto_the_older_code(stack: Stack) -> None:
    """`watcher rollback` runs the go-live steps, the workers included: the web serves the
    older release, and a task enqueued afterwards runs the older task code (v1)."""
    live = stack.live()
    before = len(stack.api.requests)
    res = stack.watcher("rollback")
    assert res.returncode == 0, res.stderr[-3000:]
    (req,) = stack.api.requests[before:]
    report = req.json
    assert report["event"] == "rollback" and steps(report)["workers"] == "ok", report
    assert stack.live() != live
    enqueue(stack, "after-manual-rollback")
    assert task_event(stack, "after-manual-rollback", "done")["code"] == "v1"


def test_no_secret_reaches_a_log_state_file_report_or_mail(stack: Stack) -> None:
    """The DB password (and the SMTP and report secrets) appear nowhere watcher writes."""
    places: dict[str, str] = {f"watcher run {i}": out for i, out in enumerate(stack.outputs)}
    for path in (stack.root / ".watcher").rglob("*"):
        if path.is_file() and path.name != "lock":
            places[str(path)] = path.read_text(errors="replace")
    for path in (stack.base / "sv").rglob("*.log"):
        places[str(path)] = path.read_text(errors="replace")
    for i, req in enumerate(stack.api.requests):
        places[f"report {i}"] = req.body.decode(errors="replace")  # the token: header only
    for i, mail in enumerate(stack.smtp.messages):
        places[f"mail {i}"] = mail.raw.decode(errors="replace")
    assert len(places) > 10
    leaks = [(where, c) for where, text in places.items() for c in CANARIES if c in text]
    assert leaks == []
