"""A long-running daemon stays clean: hundreds of checks (and a deploy among them) leave no
zombie, no lingering child, no `git cat-file` helper and no growing file descriptor count."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import structlog
from support.daemon import code_change, fd_count, proc_children, proc_cmdline, proc_state
from support.site import Site
from support.supervisord import free_port

from watcher import log
from watcher.config_load import load
from watcher.daemon.loop import Daemon

CHECKS = 600
pytestmark = pytest.mark.slow


@pytest.fixture
def quiet_log() -> Iterator[io.StringIO]:
    """watcher's log, warnings and up, into a buffer for the test (not 600 lines of info)."""
    buffer = io.StringIO()
    log.configure("warning", stream=buffer, json=True)
    yield buffer
    structlog.reset_defaults()


class Watch:
    """Samples this process's children and fds while the daemon thread runs."""

    def __init__(self, daemon: Daemon, baseline: set[int]) -> None:
        self.daemon, self.baseline, self.me = daemon, baseline, os.getpid()
        self.zombie_since: dict[int, float] = {}
        self.longest_zombie = 0.0
        self.counts: list[int] = []
        self.cat_files: set[int] = set()
        self.deployed = False  # from then on, a `git cat-file` child is a leftover

    def children(self) -> list[int]:
        return [p for p in proc_children(self.me) if p not in self.baseline]

    def sample(self) -> None:
        now = time.monotonic()
        kids = self.children()
        self.counts.append(len(kids))
        for pid in kids:
            if proc_state(pid) == "Z":
                since = self.zombie_since.setdefault(pid, now)
                self.longest_zombie = max(self.longest_zombie, now - since)
            if self.deployed and "cat-file" in proc_cmdline(pid):
                self.cat_files.add(pid)

    def fds_at(self, checks: int, timeout: float = 120.0) -> int:
        """The fewest fds seen over 30 samples once `checks` checks are done (a check in
        flight holds a pipe or two for a moment; a leak raises the floor)."""
        deadline = time.monotonic() + timeout
        while self.daemon.checks < checks:
            assert time.monotonic() < deadline, f"only {self.daemon.checks} checks"
            self.sample()
            time.sleep(0.005)
        seen = []
        for _ in range(30):
            seen.append(fd_count(self.me))
            self.sample()
            time.sleep(0.01)
        return min(seen)


def test_hundreds_of_checks_leak_no_process_and_no_fd(
        site_factory: Callable[..., Site], quiet_log: io.StringIO) -> None:
    """600 checks at a 10 ms interval, with a deploy after check 100: no zombie outlives a
    moment, no child is left at the end, no `git cat-file` helper survives the deploy, and
    the fd count at check 500 equals that at check 50 (within 2)."""
    site = site_factory()
    assert site.watcher("--once").returncode == 0
    cfg = load(site.config, environ={"WATCHER_GIT_INTERVAL": "0.01s",
                                     "WATCHER_WEBHOOK_LISTEN": f"127.0.0.1:{free_port()}"})
    daemon = Daemon(cfg)
    watch = Watch(daemon, set(proc_children(os.getpid())))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run(max_checks=CHECKS)),
                              daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        fds_50 = watch.fds_at(50)
        watch.fds_at(100)
        sha = code_change(site, "hygiene")
        watch.fds_at(150)  # the deploy happened in between
        watch.deployed = True
        assert site.served_revision() == sha
        assert daemon.metrics.render().count(b'watcher_deploys_total{outcome="succeeded"} 1.0')
        fds_500 = watch.fds_at(500)
        while thread.is_alive():
            watch.sample()
            time.sleep(0.005)
    finally:
        daemon.stop()
        thread.join(timeout=30)
    took = time.monotonic() - started
    print(f"\n{CHECKS} checks in {took:.1f}s; fds at 50: {fds_50}, at 500: {fds_500}; "
          f"children per sample max {max(watch.counts)}; longest zombie "
          f"{watch.longest_zombie * 1000:.0f} ms")
    assert result == [0]
    assert daemon.checks == CHECKS
    assert abs(fds_500 - fds_50) <= 2, (fds_50, fds_500)
    assert watch.longest_zombie < 0.5
    assert watch.cat_files == set()
    assert min(watch.counts) == 0
    assert watch.children() == []  # nothing left once the daemon is done
    logged = quiet_log.getvalue()
    assert '"level": "error"' not in logged and "check.failed" not in logged, logged[-2000:]
