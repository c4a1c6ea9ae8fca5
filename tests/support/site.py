"""A whole sandbox for end-to-end tests: a bare git remote seeded with the example app, an
app root, a real supervisord running Gunicorn from `<root>/current`, a logging API, and
watcher run as a real command against all of them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support.logapi import LogAPI
from support.supervisord import SupervisordProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "mysite"
TOKEN = "canary-report-token-5f1d9c"  # a canary: it must never show up in logs


def wheelhouse() -> Path:
    path = Path(os.environ.get("WATCHER_TEST_WHEELHOUSE", REPO_ROOT / "build" / "wheelhouse"))
    if not (path / ".complete").exists():
        raise RuntimeError(f"no wheel cache at {path}: run `make wheelhouse` (make test does)")
    return path


def git(*args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="Dev", GIT_AUTHOR_EMAIL="dev@example.com",
               GIT_COMMITTER_NAME="Dev", GIT_COMMITTER_EMAIL="dev@example.com")
    res = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         check=True, timeout=60)
    return res.stdout.strip()


def make_remote(base: Path, source: Path = EXAMPLE) -> tuple[Path, Path]:
    """A bare remote and a work tree pushing to it, seeded with `source`."""
    remote, work = base / "remote.git", base / "work"
    git("init", "--bare", "-q", "-b", "main", str(remote), cwd=base)
    shutil.copytree(source, work, ignore=shutil.ignore_patterns(
        "data", "staticfiles", "__pycache__", ".venv", "*.pyc"))
    git("init", "-q", "-b", "main", cwd=work)
    git("remote", "add", "origin", str(remote), cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "Initial import of the example site", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    return remote, work


def commit_and_push(work: Path, files: dict[str, str | None], message: str) -> str:
    """Write (or delete, with None) files in a work tree, commit, push; the new sha."""
    for rel, text in files.items():
        path = work / rel
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


class Site:
    def __init__(self, keep_releases: int = 3, extra_config: str = "",
                 health_timeout: str = "20s", workers: int = 2, startsecs: int = 1) -> None:
        # Short paths: unix socket names are limited to ~107 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="ws", dir="/tmp"))
        self.remote, self.work = make_remote(self.base)
        self.root = self.base / "app"
        self.port = free_port()
        self.api = LogAPI(lifetime_s=900)
        self.token_file = self.base / "report.token"
        self.token_file.write_text(TOKEN + "\n")
        cur = self.root / "current"
        self.sv = SupervisordProcess(self.base / "sv", {"mysite": (
            f"command={cur}/.venv/bin/gunicorn --chdir {cur} -c {cur}/gunicorn.conf.py\n"
            f'environment=GUNICORN_BIND="127.0.0.1:{self.port}",GUNICORN_WORKERS="{workers}"\n'
            f"autostart=false\nautorestart=true\nstartsecs={startsecs}\nstartretries=1\n"
            "stopsignal=TERM\nstopwaitsecs=25\nstopasgroup=true\nkillasgroup=true\n"
        )}).start()
        self.config = self.base / "watcher.toml"
        self.config.write_text(f"""
[app]
name = "mysite"
root = "{self.root}"
keep_releases = {keep_releases}

[git]
remote = "{self.remote}"
branch = "main"
interval = "1s"
timeout = "30s"

[build]
python = "{sys.executable}"
pip_args = ["--no-index", "--find-links", "{wheelhouse()}"]
shared = ["data"]

[supervisor]
url = "{self.sv.url}"
programs = ["mysite"]
start_timeout = "30s"

[health]
url = "http://127.0.0.1:{self.port}/healthz"
timeout = "{health_timeout}"
interval = "0.2s"

[report]
url = "{self.api.url}"
token_file = "{self.token_file}"
budget = "5s"
{extra_config}
""")

    # -- the remote ------------------------------------------------------------------
    def commit(self, files: dict[str, str | None], message: str) -> str:
        """Write (or delete, with None) files in the work tree, commit, push; the new sha."""
        return commit_and_push(self.work, files, message)

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.work)

    def read(self, rel: str) -> str:
        return (self.work / rel).read_text()

    # -- watcher ---------------------------------------------------------------------
    def watcher(self, *args: str, timeout: float = 300,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`python -m watcher ARGS --config <ours>`; `env`: variables added (overrides)."""
        env = {**watcher_env(), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "watcher", *args, "--config", str(self.config)],
            capture_output=True, text=True, timeout=timeout, env=env, check=False,
        )

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / ".watcher" / "state.json").read_text())
        return data

    def releases(self) -> list[str]:
        return sorted(p.name for p in (self.root / "releases").iterdir()
                      if not p.name.startswith("."))

    def live_release(self) -> str:
        return os.readlink(self.root / "current").split("/")[-1]

    # -- the app ---------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def served_revision(self) -> str:
        status, body = self.get("/healthz")
        return body.split()[-1] if status == 200 else f"HTTP {status}"

    def master_pid(self) -> int:
        return int(self.sv.rpc().getProcessInfo("mysite")["pid"])

    def program_log(self, lines: int = 80) -> str:
        """The tail of Gunicorn's log (its stderr under supervisord), with the master's
        workers and the release each one runs from: what a failed assertion needs."""
        logs = sorted((self.sv.tmpdir / "logs").glob("mysite-stderr*"))
        text = logs[-1].read_text(errors="replace") if logs else ""
        workers = []
        with contextlib.suppress(Exception):
            master = self.master_pid()
            for task in Path(f"/proc/{master}/task").iterdir():
                for pid in (task / "children").read_text().split():
                    workers.append(f"{pid} {os.readlink(f'/proc/{pid}/cwd')}")
        return "\n".join([*text.splitlines()[-lines:], "workers:", *workers])

    def close(self) -> None:
        self.sv.stop()
        self.api.close()
        shutil.rmtree(self.base, ignore_errors=True)


def watcher_env() -> dict[str, str]:
    """The environment a watcher started by a test runs with: ours without WATCHER_*
    variables, and without pytest's PYTEST_CURRENT_TEST, which names the test running and so
    would make each test's watcher a different environment (a warm gate is only used by
    the environment that started it)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("WATCHER_") and k != "PYTEST_CURRENT_TEST"}


# The example app's /healthz body, and a line put before it that makes it answer 500 only
# when Gunicorn serves it: the gate's smoke request (Django's test client) passes, the
# health check after the switch fails.
HEALTHZ = 'return HttpResponse(f"ok {revision()}\\n", content_type="text/plain; charset=utf-8")'
BROKEN_UNDER_GUNICORN = ('if request.META.get("SERVER_SOFTWARE", "").startswith("gunicorn"):\n'
                         '        return HttpResponse("broken\\n", status=500)\n    ')


def tail(res: subprocess.CompletedProcess[str]) -> str:
    """A finished command's exit code and the ends of its output, for an assertion message."""
    return f"exit {res.returncode}\nstdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-4000:]}"


def settled(site: Site, expected: str, timeout: float = 10.0) -> str:
    """What /healthz serves once old workers are gone: three answers in a row naming
    `expected`, or the last answer seen (an error's name for a dropped request) when that
    does not happen within `timeout`."""
    deadline = time.monotonic() + timeout
    streak, seen = 0, ""
    while time.monotonic() < deadline:
        try:
            seen = site.served_revision()
        except OSError as exc:  # a request dropped by a worker a HUP stops (Gunicorn 23)
            seen = type(exc).__name__
        streak = streak + 1 if seen == expected else 0
        if streak == 3:
            break
        time.sleep(0.1)
    return seen


def leftovers(root: Path) -> list[str]:
    """The `.trash-*` and temp entries in releases/ and venvs/, and a spare still being
    built (its directory without its `.json` marker): what detached children of a run are
    still deleting or writing. A finished spare, its marker and `.spare.lock` are not."""
    found = []
    for d in ("releases", "venvs"):
        if not (root / d).is_dir():
            continue
        for p in (root / d).iterdir():
            done_spare = p.name == ".spare.lock" or (
                p.name.startswith(".spare-") and (p.suffix == ".json" or (
                    p.is_dir() and p.with_name(p.name + ".json").exists())))
            if p.name.startswith(".") and not done_spare:
                found.append(p.name)
    return found


def spare_ready(root: Path, release: str, timeout: float = 60.0) -> bool:
    """Whether the spare of `release` (the next export's base, linked by a detached child
    after a deploy) is built within `timeout`."""
    deadline = time.monotonic() + timeout
    while not (root / "releases" / f".spare-{release}.json").exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def trash_emptied(root: Path, timeout: float = 60.0) -> bool:
    """Whether the `.trash-*` and temp entries a run left in releases/ and venvs/ (pruned
    ones are deleted by a detached child after `--once` exits), and a spare being built,
    are gone or done within `timeout`."""
    deadline = time.monotonic() + timeout
    while leftovers(root):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def log_events(output: str) -> list[dict[str, Any]]:
    """watcher's JSON log lines (stderr off a TTY)."""
    events = []
    for line in output.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events
