"""Three servers, one remote, one Redis: the sandbox of the [fleet] end-to-end tests.

    fleet = FleetSandbox(servers=3, lease="2s")
    fleet.commit({...}, "message")            # push to the one bare remote
    runs = fleet.once_all()                    # `watcher --once` on the three at the same time
    fleet.switch_times(runs)                   # when each one's `switch` step started
    fleet.close()

Everything is real and local: one redis-server on a unix socket, three app roots each with
its own supervisord and Gunicorn on its own port, one Nginx upstream over the three, and
one SQLite database shared by all of them, outside every release (`db/db.sqlite3`), which
the example's settings read from MYSITE_DB_PATH in each server's shared `.env`. A
migration may append to `db/migrations.log` (MYSITE_MIGRATION_LOG) to count its runs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.nginx import Nginx
from support.services import Redis
from support.site import commit_and_push, log_events, make_remote, wheelhouse
from support.supervisord import SupervisordProcess, free_port

# The example's settings with the database path taken from the environment, so three
# servers share one SQLite file outside their releases.
DB_FROM_ENV = ('"NAME": os.environ.get("MYSITE_DB_PATH") or BASE_DIR / "data" / "db.sqlite3",')

# A data migration that appends one line to MYSITE_MIGRATION_LOG each time it really runs,
# after sleeping MYSITE_MIGRATION_SLEEP_<NAME> seconds (the slow-migration test sets it).
RUNPYTHON = '''\
import os
import time

from django.db import migrations


def forwards(apps, schema_editor):
    time.sleep(float(os.environ.get("MYSITE_MIGRATION_SLEEP", "0") or 0) * {slow})
    with open(os.environ["MYSITE_MIGRATION_LOG"], "a") as log:
        log.write("{name} ran on " + os.environ.get("MYSITE_SERVER", "?") + "\\n")


class Migration(migrations.Migration):
    dependencies = [("pages", "{after}")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
'''


@dataclass
class Server:
    name: str
    root: Path
    port: int
    config: Path
    sv: SupervisordProcess
    log_dir: Path
    runs: int = 0

    def live_release(self) -> str | None:
        try:
            return os.readlink(self.root / "current").split("/")[-1]
        except OSError:
            return None


@dataclass
class Run:
    server: Server
    proc: subprocess.Popen[bytes]
    log: Path
    code: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def wait(self, timeout: float = 300) -> Run:
        self.code = self.proc.wait(timeout=timeout)
        self.events = log_events(self.log.read_text(errors="replace"))
        return self

    def started(self, step: str) -> float | None:
        """When the step started (epoch seconds), from the JSON log so far."""
        for e in log_events(self.log.read_text(errors="replace")):
            if e.get("event") == "step.start" and e.get("step") == step:
                return datetime.datetime.fromisoformat(
                    e["timestamp"].replace("Z", "+00:00")).timestamp()
        return None


class FleetSandbox:
    def __init__(self, servers: int = 3, lease: str = "2s", max_parallel: int = 1) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="wfl", dir="/tmp"))
        self.closers: list[Any] = []
        try:
            self._build(servers, lease, max_parallel)
        except BaseException:
            self.close()
            raise

    def _build(self, count: int, lease: str, max_parallel: int) -> None:
        self.remote, self.work = make_remote(self.base)
        settings = self.work / "mysite" / "settings.py"
        settings.write_text(re.sub(r'"NAME": BASE_DIR / "data" / "db.sqlite3",', DB_FROM_ENV,
                                   settings.read_text()))
        self.db_dir = self.base / "db"
        self.db_dir.mkdir()
        self.db = self.db_dir / "db.sqlite3"
        self.migration_log = self.db_dir / "migrations.log"
        self.migration_log.touch()
        self.commit({"pages/migrations/0002_count_runs.py":
                     RUNPYTHON.format(name="0002", after="0001_initial", slow=0)},
                    "A data migration that counts its runs; the database from MYSITE_DB_PATH")
        self.redis = Redis(self.base / "redis").start()
        self.closers.append(self.redis)
        self.lease, self.max_parallel = lease, max_parallel
        self.servers = [self._server(f"web{i + 1}") for i in range(count)]
        self.nginx = Nginx(self.base / "nginx", [s.port for s in self.servers],
                           self.servers[0].root).start()
        self.closers.append(self.nginx)

    def _server(self, name: str) -> Server:
        root = self.base / name / "app"
        (root / "shared" / "data").mkdir(parents=True)
        (root / "shared" / ".env").write_text(
            f"MYSITE_DB_PATH={self.db}\nMYSITE_MIGRATION_LOG={self.migration_log}\n"
            f"MYSITE_SERVER={name}\nMYSITE_ALLOWED_HOSTS=127.0.0.1,localhost\n")
        port = free_port()
        cur = root / "current"
        sv = SupervisordProcess(self.base / name / "sv", {"mysite": (
            f"command={cur}/.venv/bin/gunicorn --chdir {cur} -c {cur}/gunicorn.conf.py\n"
            f'environment=GUNICORN_BIND="127.0.0.1:{port}",GUNICORN_WORKERS="2"\n'
            "autostart=false\nautorestart=true\nstartsecs=1\nstartretries=1\n"
            "stopsignal=TERM\nstopwaitsecs=25\nstopasgroup=true\nkillasgroup=true\n")}).start()
        self.closers.append(sv)
        server = Server(name, root, port, self.base / name / "watcher.toml", sv,
                        self.base / name / "logs")
        server.log_dir.mkdir()
        self.write_config(server, fleet=True)
        return server

    def write_config(self, server: Server, fleet: bool) -> None:
        section = (f'[fleet]\nredis_url = "{self.redis.url}"\nhost = "{server.name}"\n'
                   f'lease = "{self.lease}"\nmax_parallel = {self.max_parallel}\n'
                   'wait = "120s"\n') if fleet else ""
        server.config.write_text(f"""
[app]
name = "mysite"
root = "{server.root}"
keep_releases = 3
[git]
remote = "{self.remote}"
branch = "main"
interval = "1s"
timeout = "30s"
[build]
python = "{sys.executable}"
pip_args = ["--no-index", "--find-links", "{wheelhouse()}"]
shared = [".env", "data"]
[supervisor]
url = "{server.sv.url}"
programs = ["mysite"]
start_timeout = "30s"
[health]
url = "http://127.0.0.1:{server.port}/healthz"
timeout = "10s"
interval = "0.2s"
{section}""")

    # -- the remote ------------------------------------------------------------------
    def commit(self, files: dict[str, str | None], message: str) -> str:
        return commit_and_push(self.work, files, message)

    # -- watchers --------------------------------------------------------------------
    def start(self, server: Server, *args: str) -> Run:
        """`watcher --once` (or `args`) on one server, in its own process group."""
        server.runs += 1
        log = server.log_dir / f"run{server.runs}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "watcher", *(args or ("--once",)),
                 "--config", str(server.config)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return Run(server, proc, log)

    def once_all(self, timeout: float = 300) -> list[Run]:
        runs = [self.start(s) for s in self.servers]
        return [r.wait(timeout) for r in runs]

    def cli(self, server: Server, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
        return subprocess.run([sys.executable, "-m", "watcher", *args, "--config",
                               str(server.config)], capture_output=True, text=True,
                              timeout=120, env=env, check=False)

    @staticmethod
    def kill_group(run: Run) -> None:
        """SIGKILL the watcher and every process it started, like a server dying."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait()

    # -- what happened ---------------------------------------------------------------
    def served(self, server: Server) -> str:
        import urllib.request

        try:
            url = f"http://127.0.0.1:{server.port}/healthz"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read().decode().split()[-1]
        except OSError as exc:
            return type(exc).__name__

    def migration_runs(self) -> list[str]:
        return self.migration_log.read_text().splitlines()

    def applied(self, name: str) -> int:
        """How many rows django_migrations holds for pages.<name>."""
        with contextlib.closing(sqlite3.connect(self.db, timeout=20)) as conn:
            row = conn.execute("SELECT COUNT(*) FROM django_migrations WHERE app = 'pages' "
                               "AND name = ?", (name,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Stop everything, the three supervisords at the same time (each waits for its
        Gunicorn's graceful shutdown)."""
        def stop(closer: Any) -> None:
            with contextlib.suppress(Exception):
                closer.stop()

        threads = [threading.Thread(target=stop, args=(c,)) for c in self.closers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        shutil.rmtree(self.base, ignore_errors=True)


def runpython(name: str, after: str, slow: bool = False) -> str:
    """The text of a counting data migration `name` after `after`."""
    return RUNPYTHON.format(name=name, after=after, slow=1 if slow else 0)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
