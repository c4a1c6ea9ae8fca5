"""A real `watcher run` subprocess for tests and benchmarks, its JSON log in a file.

    with DaemonProcess(site, git_interval="60s") as d:   # WATCHER_GIT_INTERVAL=60s
        d.wait_for("check.unchanged")
        os.kill(d.pid, signal.SIGUSR1)
        d.wait_for("check.unchanged", after=1)            # the second one

Keyword overrides become `WATCHER_<KEY>` variables (the config file stays the Site's); the
caller's own WATCHER_* variables are dropped. Leaving the block stops a daemon still
running: SIGTERM first, so a deploy under way finishes and the next test finds the site
settled (not a half-done deploy to redo at its first check), then SIGKILL after `grace`
seconds, so no test leaves one behind.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from support.site import Site, watcher_env

# The events that each mark the start of one check of the remote.
CHECK_EVENTS = frozenset({"check.unchanged", "check.known_bad", "deploy.start",
                          "check.lock_held", "check.failed"})


class DaemonProcess:
    def __init__(self, site: Site, **overrides: str) -> None:
        env = watcher_env()
        env.update({f"WATCHER_{key.upper()}": value for key, value in overrides.items()})
        self.log_path = site.base / f"daemon-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(site.config)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the log ---------------------------------------------------------------------
    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """Every complete JSON line so far (a line still being written is left out)."""
        out = []
        for line in self.text().splitlines(keepends=True):
            if line.startswith("{") and line.endswith("\n"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    raise AssertionError(f"a corrupt log line: {line!r}") from None
        return out

    def named(self, *names: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") in names]

    def checks(self) -> int:
        return len(self.named(*CHECK_EVENTS))

    def wait_for(self, event: str, after: int = 0, timeout: float = 30.0,
                 match: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Wait until more than `after` events named `event` (and matching) are logged."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.named(event) if match is None or match(e)]
            if len(found) > after:
                return found[after]
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {event}:\n"
                                     + self.text()[-3000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} #{after + 1} in {timeout}s:\n"
                                     + self.text()[-3000:])
            time.sleep(0.05)

    def wait_step(self, step: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait_for("step.start", timeout=timeout, match=lambda e: e.get("step") == step)

    # -- signals and the end ---------------------------------------------------------
    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self, grace: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def post_github_push(port: int, secret: str, sha: str = "0" * 40,
                     branch: str = "main") -> int:
    """POST a GitHub push event signed with `secret` to the daemon; the HTTP status."""
    body = json.dumps({"ref": f"refs/heads/{branch}", "after": sha}).encode()
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/hooks/github", body=body, headers={
            "Content-Type": "application/json", "X-GitHub-Event": "push",
            "X-Hub-Signature-256": f"sha256={mac}"})
        return conn.getresponse().status
    finally:
        conn.close()


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET from the daemon's listener: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def wait_served(site: Site, sha: str, timeout: float = 60.0, poll: float = 0.02) -> float:
    """Poll the app until it serves `sha`; the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if site.served_revision() == sha:
            return time.monotonic()
        time.sleep(poll)
    raise AssertionError(f"{sha[:12]} not served within {timeout}s "
                         f"(serving {site.served_revision()[:12]})")


def code_change(site: Site, tag: str) -> str:
    """Push a code-only change of the example app (a comment in views.py); the new sha."""
    views = "pages/views.py"
    return site.commit({views: site.read(views) + f"# {tag}\n"}, f"Code-only change: {tag}")


def proc_children(pid: int) -> list[int]:
    """The pids of `pid`'s children (across all its threads), from /proc."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def proc_state(pid: int) -> str:
    """The one-letter state of a process ("Z" for a zombie), "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def openers(path: Path) -> list[tuple[int, list[str]]]:
    """The processes with `path` open (pid, argv): who keeps an flock on it alive."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if str(path) in links:
            found.append((int(entry.name), proc_cmdline(int(entry.name))))
    return found


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def webhook_site(site_factory: Callable[..., Site], secret_dir: Path,
                 secret: str) -> tuple[Site, int]:
    """A site with `[webhook]` on a free loopback port and `secret` in a file under
    `secret_dir`, deployed once; returns it and the port."""
    from support.supervisord import free_port

    secret_file = secret_dir / "webhook.secret"
    secret_file.write_text(secret + "\n")
    port = free_port()
    site = site_factory(extra_config=(
        f'[webhook]\nlisten = "127.0.0.1:{port}"\nsecret_file = "{secret_file}"\n'))
    first = site.watcher("--once")
    assert first.returncode == 0, first.stderr[-3000:]
    return site, port
