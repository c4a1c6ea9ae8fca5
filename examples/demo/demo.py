"""`make demo`: watcher end to end on a local sandbox, no server needed.

Builds .demo/ in the checkout: a bare git remote seeded with examples/mysite, an app root,
a supervisord (unix socket) running Gunicorn from <root>/current and `watcher run` as
[program:watcher]. Then: the first deploy with `watcher --once`, a visible change pushed,
a signed GitHub-style webhook sent with curl, and curl showing the new revision served.
`make demo-stop` (this script's `stop`) shuts it all down and removes .demo/.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / ".demo"
BIN = Path(sys.executable).parent
WHEELS = REPO / "build" / "wheelhouse"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


def sh(*argv: str, cwd: Path | None = None, check: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHER_", "GIT_"))}
    env.update(GIT_AUTHOR_NAME="Demo", GIT_AUTHOR_EMAIL="demo@example.com",
               GIT_COMMITTER_NAME="Demo", GIT_COMMITTER_EMAIL="demo@example.com")
    res = subprocess.run(argv, cwd=cwd, env=env, text=True, capture_output=True, check=False)
    if check and res.returncode != 0:
        sys.exit(f"demo: {' '.join(argv)} failed:\n{res.stdout}{res.stderr}")
    return res.stdout.strip()


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return int(s.getsockname()[1])
            except OSError:
                continue
    raise SystemExit("demo: no free port")


def curl(url: str) -> str:
    return sh("curl", "-s", "--max-time", "5", url, check=False)


def show_health(port: int) -> None:
    print(f"$ curl http://127.0.0.1:{port}/healthz\n{curl(f'http://127.0.0.1:{port}/healthz')}")


def start() -> None:
    if (DEMO / "supervisord.pid").exists():
        stop()
    DEMO.mkdir()
    remote, work, root = DEMO / "remote.git", DEMO / "work", DEMO / "app"
    app_port, hook_port = free_port(8000), free_port(9090)
    secret = secrets.token_hex(16)
    (DEMO / "webhook.secret").write_text(secret + "\n")
    os.chmod(DEMO / "webhook.secret", 0o600)

    say("A bare git remote seeded with the example Django site")
    sh("git", "init", "-q", "--bare", "-b", "main", str(remote))
    shutil.copytree(REPO / "examples" / "mysite", work,
                    ignore=shutil.ignore_patterns("data", "staticfiles", "__pycache__"))
    sh("git", "init", "-q", "-b", "main", cwd=work)
    sh("git", "add", "-A", cwd=work)
    sh("git", "commit", "-q", "-m", "Example site", cwd=work)
    sh("git", "push", "-q", str(remote), "main", cwd=work)
    print(f"remote: {remote}")

    config = DEMO / "watcher.toml"
    config.write_text(f"""[app]
name = "mysite"
root = "{root}"
keep_releases = 3

[git]
remote = "{remote}"
branch = "main"
interval = "30s"

[build]
python = "{sys.executable}"
pip_args = ["--no-index", "--find-links", "{WHEELS}"]
shared = ["data"]

[supervisor]
url = "unix://{DEMO}/supervisor.sock"
programs = ["mysite"]

[health]
url = "http://127.0.0.1:{app_port}/healthz"
timeout = "30s"

[webhook]
listen = "127.0.0.1:{hook_port}"
secret_file = "{DEMO}/webhook.secret"
""")
    cur = root / "current"
    (DEMO / "supervisord.conf").write_text(f"""[unix_http_server]
file={DEMO}/supervisor.sock
chmod=0700

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{DEMO}/supervisor.sock

[supervisord]
logfile={DEMO}/supervisord.log
pidfile={DEMO}/supervisord.pid
childlogdir={DEMO}

[program:mysite]
command={cur}/.venv/bin/gunicorn --chdir {cur} -c {cur}/gunicorn.conf.py
environment=GUNICORN_BIND="127.0.0.1:{app_port}"
autostart=false
startsecs=2
stopwaitsecs=30
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={DEMO}/mysite.log

[program:watcher]
command={BIN}/watcher run --config {config}
autostart=false
startsecs=2
stopsignal=TERM
stopwaitsecs=60
stopasgroup=true
redirect_stderr=true
stdout_logfile={DEMO}/watcher.log
""")
    say("supervisord on a unix socket, with [program:mysite] and [program:watcher]")
    sh(str(BIN / "supervisord"), "-c", str(DEMO / "supervisord.conf"))
    ctl = [str(BIN / "supervisorctl"), "-c", str(DEMO / "supervisord.conf")]
    for _ in range(50):
        if sh(*ctl, "pid", check=False).isdigit():
            break
        time.sleep(0.1)

    say("watcher check")
    print(sh(str(BIN / "watcher"), "check", "--config", str(config), check=False))

    say("First deploy: watcher --once (builds the venv from the local wheel cache)")
    t = time.monotonic()
    res = subprocess.run([str(BIN / "watcher"), "--once", "--config", str(config)],
                         text=True, capture_output=True, check=False)
    print(res.stdout.strip(), f"({time.monotonic() - t:.1f}s, exit {res.returncode})")
    if res.returncode != 0:
        print(res.stderr[-3000:])
        sys.exit("demo: the first deploy failed")
    show_health(app_port)

    say("Start the daemon as Supervisord's [program:watcher]")
    print(sh(*ctl, "start", "watcher", check=False))

    say("Push a visible change")
    page = work / "pages" / "templates" / "pages" / "index.html"
    page.write_text(page.read_text().replace("</body>", "<p>Deployed by watcher.</p></body>"))
    sh("git", "commit", "-q", "-am", "Say who deployed this", cwd=work)
    sh("git", "push", "-q", str(remote), "main", cwd=work)
    sha = sh("git", "rev-parse", "HEAD", cwd=work)
    print(f"pushed {sha[:12]}")

    say("A signed GitHub webhook (the forge would send this on push)")
    body = json.dumps({"ref": "refs/heads/main", "after": sha})
    sig = "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    t = time.monotonic()
    print(sh("curl", "-s", "-o", "/dev/null", "-w", "HTTP %{http_code}\n", "-X", "POST",
             "-H", "X-GitHub-Event: push", "-H", f"X-Hub-Signature-256: {sig}",
             "-H", "Content-Type: application/json", "--data", body,
             f"http://127.0.0.1:{hook_port}/hooks/github", check=False))
    while time.monotonic() - t < 60:
        if sha in curl(f"http://127.0.0.1:{app_port}/healthz"):
            break
        time.sleep(0.1)
    print(f"webhook to serving: {time.monotonic() - t:.2f}s")
    show_health(app_port)
    page_html = curl(f"http://127.0.0.1:{app_port}/")
    deployed = "\n".join(li for li in page_html.splitlines() if "Deployed" in li)
    print(f"$ curl -s http://127.0.0.1:{app_port}/ | grep Deployed\n{deployed}")
    if sha not in curl(f"http://127.0.0.1:{app_port}/healthz"):
        sys.exit("demo: the new revision is not served")

    say("watcher status / history")
    print(sh(str(BIN / "watcher"), "status", "--config", str(config)))
    print(sh(str(BIN / "watcher"), "history", "--config", str(config)))
    say(f"Done. The site is at http://127.0.0.1:{app_port}/ ; `make demo-stop` cleans up.")


def stop() -> None:
    conf = DEMO / "supervisord.conf"
    if conf.exists():
        subprocess.run([str(BIN / "supervisorctl"), "-c", str(conf), "shutdown"],
                       capture_output=True, check=False, timeout=90)
        pidfile = DEMO / "supervisord.pid"
        for _ in range(100):
            if not pidfile.exists():
                break
            time.sleep(0.1)
    shutil.rmtree(DEMO, ignore_errors=True)
    print("demo stopped and removed")


if __name__ == "__main__":
    {"start": start, "stop": stop}[sys.argv[1] if len(sys.argv) > 1 else "start"]()
