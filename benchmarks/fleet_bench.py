"""[fleet] rows: a three-server rollout's wall time against three single-server deploys, and
Redis round trips per deploy and per no-op check.

Runs in the three-server sandbox of the tests (tests/support/fleet.py: one redis-server on a
unix socket, three app roots with their own supervisord and Gunicorn, one Nginx, one shared
SQLite). Commands are counted on the real server with `INFO commandstats` (less the INFO
calls themselves); a pipeline is several commands in one round trip, so both are shown.

    .venv/bin/python benchmarks/fleet_bench.py      # prints a Markdown table
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("WATCHER_TEST_WHEELHOUSE",
                      str(Path(__file__).resolve().parents[1] / "build" / "wheelhouse"))

from support.fleet import FleetSandbox, runpython
from support.services import Redis


class Monitor:
    """`redis-cli MONITOR` for the length of a `with`: the commands clients sent, by name.
    Commands that redis-py's lock scripts run inside Redis (shown as `[0 lua]`) are not
    round trips and are left out; so is the monitor's own connection."""

    def __init__(self, redis: Redis, log: Path) -> None:
        self.redis, self.log = redis, log
        self.counts: dict[str, int] = {}

    def __enter__(self) -> Monitor:
        self.out = self.log.open("wb")
        self.proc = subprocess.Popen(["redis-cli", "-s", str(self.redis.socket), "MONITOR"],
                                     stdout=self.out, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.log.stat().st_size == 0 and time.monotonic() < deadline:  # its "OK"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        self.proc.terminate()
        self.proc.wait()
        self.out.close()
        for line in self.log.read_text(errors="replace").splitlines():
            m = re.match(r'^[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"', line)
            if m and m.group(1) != "lua":
                name = m.group(2).lower()
                self.counts[name] = self.counts.get(name, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def round_trips(self) -> int:
        """Commands less those that rode in the same pipeline (ltrim, expire after lpush)."""
        return self.total - self.counts.get("ltrim", 0) - self.counts.get("expire", 0)


def show(mon: Monitor) -> str:
    return f"{mon.round_trips} round trips; " + ", ".join(
        f"{k} {v}" for k, v in sorted(mon.counts.items()))


def main() -> int:
    started = time.monotonic()
    fleet = FleetSandbox(servers=3, lease="30s", max_parallel=1)
    rows: list[tuple[str, str, str]] = []
    n = 0

    def push(migration: bool = False) -> None:
        nonlocal n
        n += 1
        files = {"README.md": f"bench push {n}\n"}
        if migration:
            files[f"pages/migrations/{n + 100:04d}_bench.py"] = runpython(
                f"{n + 100:04d}", last_migration[0])
            last_migration[0] = f"{n + 100:04d}_bench"
        fleet.commit(files, f"bench push {n}")

    last_migration = ["0002_count_runs"]

    def timed_all() -> float:
        t = time.monotonic()
        runs = fleet.once_all()
        assert all(r.code == 0 for r in runs), [r.log.read_text()[-2000:] for r in runs]
        return time.monotonic() - t

    try:
        fleet.commit({"README.md": "warm-up\n"}, "warm-up: builds the three venvs")
        timed_all()
        # Three single-server deploys, without [fleet], one after the other.
        for s in fleet.servers:
            fleet.write_config(s, fleet=False)
        push()
        singles = []
        for s in fleet.servers:
            t = time.monotonic()
            assert fleet.start(s).wait().code == 0
            singles.append(time.monotonic() - t)
        push()
        concurrent = timed_all()
        for s in fleet.servers:
            fleet.write_config(s, fleet=True)
        logs = fleet.base / "monitor"
        logs.mkdir()
        push()
        with Monitor(fleet.redis, logs / "rollout.log") as per_rollout:
            rolled = timed_all()
        push(migration=True)
        with Monitor(fleet.redis, logs / "rollout-migration.log") as per_rollout_m:
            rolled_m = timed_all()
        fleet.max_parallel = 3
        for s in fleet.servers:
            fleet.write_config(s, fleet=True)
        push()
        wide = timed_all()
        # One server alone: a code-only deploy, then a check that finds nothing new.
        push()
        web1 = fleet.servers[0]
        with Monitor(fleet.redis, logs / "one.log") as one_deploy:
            assert fleet.start(web1).wait().code == 0
        with Monitor(fleet.redis, logs / "noop.log") as noop:
            assert fleet.start(web1).wait().code == 0

        rows += [
            ("three single-server deploys, one after the other (no [fleet])",
             f"{sum(singles):.1f} s", ", ".join(f"{x:.1f}" for x in singles)),
            ("three servers deploying at once (no [fleet])", f"{concurrent:.1f} s",
             "switches together; migrations would run three times"),
            ("three-server rollout, max_parallel = 1, code-only", f"{rolled:.1f} s",
             "one server between switch and health at a time"),
            ("three-server rollout, max_parallel = 1, with a migration", f"{rolled_m:.1f} s",
             "migrated once; two servers wait for its result"),
            ("three-server rollout, max_parallel = 3, code-only", f"{wide:.1f} s", ""),
            ("Redis commands, whole code-only rollout (3 servers)",
             str(per_rollout.total), show(per_rollout) + "; waits poll"),
            ("Redis commands, whole rollout with a migration (3 servers)",
             str(per_rollout_m.total), show(per_rollout_m)),
            ("Redis commands, one code-only deploy on one server, no contention",
             str(one_deploy.total), show(one_deploy)),
            ("Redis commands, one no-op check (`watcher --once`, new connection)",
             str(noop.total), show(noop) + "; target ≤ 1"),
        ]
    finally:
        fleet.close()
    print(f"Measured by `benchmarks/fleet_bench.py` in {time.monotonic() - started:.0f} s "
          f"on {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} after.\n")
    print("| measure | value | note |\n|---|---|---|")
    for measure, value, note in rows:
        print(f"| {measure} | {value} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
