"""Rows that need `watcher run`: webhook-to-serving latency, CPU per no-op check, RSS after
1,000 checks; and `watcher --once` when nothing changed.

The daemon runs as its own process (`python -m watcher run`) with a variant of the sandbox's
watcher.toml: a long interval when a webhook must be what starts the deploy, a 10 ms one
when checks are counted. CPU and RSS come from /proc/<pid>; CPU includes the children a
check waits for (git ls-remote).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from sandbox import Sandbox

from watcher.daemon.hints import HINT_GAP

SECRET = "bench-webhook-secret"  # noqa: S105 - a throwaway loopback secret
TICKS = os.sysconf("SC_CLK_TCK")


class Daemon:
    def __init__(self, sandbox: Sandbox, interval: str, port: int) -> None:
        site = sandbox.site
        self.port = port
        secret = site.base / "webhook.secret"
        secret.write_text(SECRET + "\n")
        text = site.config.read_text().replace('interval = "1s"', f"interval = {interval}")
        text += f'\n[webhook]\nlisten = "127.0.0.1:{port}"\nsecret_file = "{secret}"\n'
        self.config = site.base / f"daemon-{port}.toml"
        self.config.write_text(text)
        self.log = (site.base / f"daemon-{port}.log").open("w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.health()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("watcher run did not come up") from None
                time.sleep(0.05)

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def cpu_seconds(self) -> float:
        """utime + stime of the daemon and of the children it has waited for."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def once_noop(sandbox: Sandbox, runs: int = 5) -> list[float]:
    """Wall time of `watcher --once` with the branch where the live release is."""
    times = []
    for _ in range(runs):
        started = time.monotonic()
        res = sandbox.site.watcher("--once", timeout=60)
        times.append(time.monotonic() - started)
        if res.returncode != 0 or "check.unchanged" not in res.stderr:
            raise RuntimeError(f"--once was not a no-op: {res.stderr[-2000:]}")
    return times


def webhook_to_serving(sandbox: Sandbox, nginx_url: str, port: int, runs: int = 3
                       ) -> list[float]:
    """Seconds from a signed GitHub push webhook (sent through Nginx's /hooks/) until
    Nginx serves the pushed sha; the daemon polls only hourly, so the webhook starts it."""
    daemon = Daemon(sandbox, '"1h"', port)
    times = []
    try:
        time.sleep(1.0)  # its first check (at start) is done
        for n in range(runs):
            sha = sandbox.commit_code(1000 + n)
            body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
            sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            req = urllib.request.Request(
                f"{nginx_url}/hooks/github", data=body, method="POST",
                headers={"Content-Type": "application/json", "X-GitHub-Event": "push",
                         "X-Hub-Signature-256": f"sha256={sig}"})
            started = time.monotonic()
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status != 202:
                    raise RuntimeError(f"webhook answered {resp.status}")
            while sandbox.served(nginx_url) != sha:
                if time.monotonic() - started > 60:
                    raise RuntimeError("the pushed sha was not served within 60 s")
                time.sleep(0.02)
            times.append(time.monotonic() - started)
            # The old workers finish and the next push starts from calm, past the daemon's
            # per-source hint gap (a push inside it waits for the gap's end, on purpose:
            # daemon/hints.py), so each run measures one push, not the rate limit.
            time.sleep(max(1.0, HINT_GAP - (time.monotonic() - started)))
    finally:
        daemon.stop()
    return times


def checks(sandbox: Sandbox, port: int, count: int = 1000, warmup: int = 50
           ) -> dict[str, float]:
    """CPU per no-op check (after `warmup`), RSS at `warmup` and at `count` checks."""
    daemon = Daemon(sandbox, "0.01", port)
    try:
        while daemon.health()["checks"] < warmup:
            time.sleep(0.05)
        cpu0, n0, rss0, t0 = daemon.cpu_seconds(), daemon.health()["checks"], daemon.rss_mb(), \
            time.monotonic()
        while (n1 := daemon.health()["checks"]) < count:
            if daemon.proc.poll() is not None:
                raise RuntimeError("the daemon died")
            time.sleep(0.1)
        cpu1, rss1, t1 = daemon.cpu_seconds(), daemon.rss_mb(), time.monotonic()
    finally:
        daemon.stop()
    return {"cpu_ms_per_check": (cpu1 - cpu0) / (n1 - n0) * 1000,
            "wall_ms_per_check": (t1 - t0) / (n1 - n0) * 1000,
            "rss_warm_mb": rss0, "rss_mb": rss1, "checks": n1}


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- standalone: a plain Site (Gunicorn straight, no Nginx) ------------------------------
#
#     .venv/bin/python benchmarks/daemon_bench.py [--checks 1000] [--runs 5] [--json]
#
# `measure()` builds its own site (tests/support/site.py), deploys it once, then runs
# `watcher run` twice: at a 10 ms interval to count no-op checks, and at 60 s so that only
# a signed webhook starts each deploy. CPU is split into the daemon's own and that of the
# children it waited for (git ls-remote and git-upload-pack).


def _proc_cpu(pid: int) -> tuple[float, float]:
    """(own utime+stime, reaped children's cutime+cstime) of `pid`, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICKS
    kids = (int(fields[13]) + int(fields[14])) / TICKS
    return own, kids


def _proc_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for pid {pid}")


def measure(checks: int = 1000, latency_runs: int = 5, warmup: int = 20) -> dict[str, Any]:
    """No-op check cost (CPU ms per check, RSS after `checks` checks) and webhook->serving
    latency of a code-only change, against a freshly deployed example site."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.daemon import DaemonProcess, code_change, http_get, post_github_push, wait_served
    from support.site import Site
    from support.supervisord import free_port

    secret_dir = Path(tempfile.mkdtemp(prefix="wb"))
    (secret_dir / "hook.secret").write_text(SECRET + "\n")
    port = free_port()
    site = Site(extra_config=f'[webhook]\nlisten = "127.0.0.1:{port}"\n'
                             f'secret_file = "{secret_dir / "hook.secret"}"\n')
    out: dict[str, Any] = {}
    try:
        first = site.watcher("--once")
        if first.returncode != 0:
            raise RuntimeError(f"first deploy failed: {first.stderr[-2000:]}")

        def done() -> int:
            return int(json.loads(http_get(port, "/healthz")[1])["checks"])

        with DaemonProcess(site, git_interval="0.01s") as d:
            d.wait_for("check.unchanged")
            while done() < warmup:
                time.sleep(0.05)
            n0, (own0, kids0), t0 = done(), _proc_cpu(d.pid), time.monotonic()
            rss0 = _proc_mib(d.pid, "VmRSS")
            while (n1 := done()) < warmup + checks:
                time.sleep(0.2)
            (own1, kids1), t1 = _proc_cpu(d.pid), time.monotonic()
            out.update(
                noop_checks=n1, rss_mib_warm=rss0, rss_mib=_proc_mib(d.pid, "VmRSS"),
                rss_peak_mib=_proc_mib(d.pid, "VmHWM"),
                cpu_ms_per_check=(own1 - own0) / (n1 - n0) * 1000,
                child_cpu_ms_per_check=(kids1 - kids0) / (n1 - n0) * 1000,
                wall_ms_per_check=(t1 - t0) / (n1 - n0) * 1000)
            if d.stop() != 0:
                raise RuntimeError("watcher run did not exit 0")

        latencies, deploys = [], []
        with DaemonProcess(site, git_interval="60s") as d:
            d.wait_for("check.unchanged")
            for n in range(latency_runs):
                sha = code_change(site, f"bench {n}")
                sent = time.monotonic()
                if post_github_push(port, SECRET, sha) != 202:
                    raise RuntimeError("the webhook was not accepted")
                latencies.append(wait_served(site, sha, poll=0.01) - sent)
                deploys.append(float(d.wait_for("deploy.finished", after=n)["duration_s"]))
                time.sleep(0.5)  # old workers gone; the next run starts from calm
            d.stop()
        out.update(webhook_to_serving_s=median(latencies), webhook_runs_s=latencies,
                   deploy_s=median(deploys))
    finally:
        site.close()
        shutil.rmtree(secret_dir, ignore_errors=True)
    return out


def table(m: dict[str, Any]) -> str:
    runs = ", ".join(f"{t:.2f}" for t in m["webhook_runs_s"])
    rows = [
        ("CPU per no-op check, daemon", f"{m['cpu_ms_per_check']:.2f} ms"),
        ("CPU per no-op check, git children", f"{m['child_cpu_ms_per_check']:.2f} ms"),
        ("wall per check at a 10 ms interval", f"{m['wall_ms_per_check']:.1f} ms"),
        (f"RSS after {m['noop_checks']} checks", f"{m['rss_mib']:.1f} MiB "
                                                 f"(warm {m['rss_mib_warm']:.1f}, "
                                                 f"peak {m['rss_peak_mib']:.1f})"),
        ("webhook -> serving, code-only (median)", f"{m['webhook_to_serving_s']:.2f} s"),
        ("  runs", runs),
        ("  deploy.start -> deploy.finished (median)", f"{m['deploy_s']:.2f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--checks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(checks=args.checks, latency_runs=args.runs)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
