"""Real faults for the reliability tests: stalled servers, a live poller of the site, watcher
as a streamed subprocess one can kill mid-step, config edits, immutable directories.

    with StalledServer() as stall:          # accepts on 127.0.0.1 and never answers
        stall.url                            # "http://127.0.0.1:<port>"
    with Poller(site.port) as poll: ...      # GET /healthz every 50 ms; poll.samples
    proc = WatcherProc(site, "--once")       # stderr parsed as JSON log events as they come
    proc.wait_for(step_start("migrate")); proc.kill(); proc.reap_orphans()
    set_config(site.config, base, {"hooks": {"pre_switch": '[["false"]]'}})
    bench = Bench(*new_site())               # a deployed site; bench.commit_fault(...),
                                             # bench.undo (an ExitStack), bench.good_commit()

Every server here listens on 127.0.0.1 only and is stopped by `close()` / the `with` exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.site import Site

Event = dict[str, Any]


class StalledServer:
    """A TCP server that accepts every connection and never sends a byte (a hung peer)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
        for conn in self._held:
            conn.close()

    def __enter__(self) -> StalledServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Poller:
    """GET http://127.0.0.1:<port>/healthz every `every` seconds from a thread; `samples`
    holds (HTTP status or 0 for no answer, the revision in the body or the error)."""

    def __init__(self, port: int, every: float = 0.05) -> None:
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.every = every
        self.samples: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    body = resp.read().decode()
                    self.samples.append((resp.status, body.split()[-1] if body else ""))
            except urllib.error.HTTPError as exc:
                self.samples.append((exc.code, ""))
            except OSError as exc:
                self.samples.append((0, type(exc).__name__))
            self._stop.wait(self.every)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def bad(self, sha: str) -> list[tuple[int, str]]:
        """Samples that are not a 200 serving `sha`."""
        return [s for s in self.samples if s != (200, sha)]


def step_start(name: str) -> Callable[[Event], bool]:
    return lambda e: e.get("event") == "step.start" and e.get("step") == name


def step_end(name: str, outcome: str | None = None) -> Callable[[Event], bool]:
    return lambda e: (e.get("event") == "step.end" and e.get("step") == name
                      and (outcome is None or e.get("outcome") == outcome))


def event(name: str) -> Callable[[Event], bool]:
    return lambda e: e.get("event") == name


class WatcherProc:
    """`python -m watcher ARGS --config site.config` with stderr read line by line, so a test
    can act (SIGKILL it, SIGCONT supervisord) the moment an event shows up. Every child it
    starts carries a marker variable, so children orphaned by a SIGKILL can be found."""

    def __init__(self, config: Path, *args: str) -> None:
        self.marker = uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
        env["FAULTS_TEST_MARK"] = self.marker
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", *args, "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.events: list[Event] = []
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        self.events.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[Event], bool], timeout: float = 120) -> Event:
        """The first event matching `pred`; AssertionError if watcher exits or time runs out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"event not seen (exit {self.proc.poll()}); stderr tail:\n"
                        + "".join(self.lines[-15:]))
                self._cond.wait(min(left, 0.2))

    def wait(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stdout(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.read()

    def kill(self) -> None:
        """SIGKILL watcher itself (not its children), as the OOM killer or `kill -9` would."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.wait(timeout=30)

    def orphans(self) -> list[int]:
        """Live processes (other than watcher) carrying this run's marker: its children."""
        found = []
        needle = f"FAULTS_TEST_MARK={self.marker}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.proc.pid:
                continue
            try:
                environ = (entry / "environ").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state = stat.rsplit(")", 1)[-1].split()[0]
            if needle in environ.split(b"\0") and state != "Z":
                found.append(int(entry.name))
        return found

    def reap_orphans(self) -> list[int]:
        """SIGKILL every process this run started that outlived it; the pids killed."""
        pids = self.orphans()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.orphans() and time.monotonic() < deadline:
            time.sleep(0.05)
        return pids

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.reap_orphans()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def set_config(config: Path, base: str, edits: dict[str, dict[str, str]]) -> None:
    """Write `base` TOML with `edits` ({section: {key: toml_value}}) applied: a key present in
    the section is replaced, a new one added under the header, a missing section appended."""
    lines = base.splitlines()
    for section, keys in edits.items():
        header = f"[{section}]"
        if header not in lines:
            lines += ["", header]
        start = lines.index(header) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
        body = [ln for ln in lines[start:end]
                if not any(re.match(rf"\s*{re.escape(k)}\s*=", ln) for k in keys)]
        body = [f"{k} = {v}" for k, v in keys.items()] + body
        lines[start:end] = body
    config.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i` on a directory: nothing can be created in it, not even by root."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def git_config(repo: Path, key: str, value: str | None) -> None:
    """Set (or with None unset) a key in a repository's own config file."""
    args = ["git", "config", "--file", str(repo / "config")]
    args += [key, value] if value is not None else ["--unset-all", key]
    subprocess.run(args, check=value is not None, capture_output=True, timeout=30)


def loose_object(repo: Path, sha: str) -> Path:
    return repo / "objects" / sha[:2] / sha[2:]


def complete_release(root: Path) -> bool:
    """`current` resolves to a release with REVISION and a .venv whose python exists."""
    cur = root / "current"
    return (cur / "REVISION").is_file() and (cur / ".venv" / "bin" / "python").exists()


# -- the bench: one site shared by the cells, a fresh one when a cell left it broken ------
class Bench:
    """A healthy site plus what a cell changed, so it can all be undone."""

    counter = 0

    def __init__(self, site: Site, base_config: str) -> None:
        self.site = site
        self.base_config = base_config
        self.originals: dict[str, str | None] = {}
        self.undo = contextlib.ExitStack()

    @property
    def mirror(self) -> Path:
        return self.site.root / "repo"

    def commit_fault(self, files: dict[str, str | None], msg: str) -> str:
        for rel in files:
            if rel not in self.originals:
                path = self.site.work / rel
                self.originals[rel] = path.read_text() if path.exists() else None
        return self.site.commit({**files, "pages/marker.py": self._marker()}, msg)

    def good_commit(self) -> str:
        """Every file a fault touched put back, plus a code-only change."""
        restore = {rel: text for rel, text in self.originals.items()
                   if text is not None or (self.site.work / rel).exists()}
        self.originals.clear()
        return self.site.commit({**restore, "pages/marker.py": self._marker()},
                                "A good code-only change")

    def configure(self, edits: dict[str, dict[str, str]]) -> None:
        set_config(self.site.config, self.base_config, edits)

    def reset_config(self) -> None:
        self.site.config.write_text(self.base_config)

    @staticmethod
    def _marker() -> str:
        Bench.counter += 1
        return f"MARK = {Bench.counter}\n"


def new_site() -> tuple[Site, str]:
    # startsecs 3: a Gunicorn whose config raises (reload-exit) must exit inside it, so
    # supervisord never counts it RUNNING, even on cores busy with the rest of the suite.
    site = Site(keep_releases=3, startsecs=3)
    try:
        first = site.watcher("--once")
        assert first.returncode == 0, first.stderr[-3000:]
        assert site.served_revision() == site.head()
    except BaseException:
        site.close()
        raise
    return site, site.config.read_text()


def healthy(site: Site) -> bool:
    try:
        state = site.state()
        live = state["releases"][state["live"]]
        return (site.live_release() == state["live"] and live["sha"] == site.head()
                and site.served_revision() == site.head() and complete_release(site.root))
    except (OSError, KeyError, ValueError):
        return False


# -- fixtures: one healthy site per module, put back in shape after each test ------------------
@pytest.fixture(scope="module")
def pool() -> Iterator[dict[str, Any]]:
    holder: dict[str, Any] = {}
    yield holder
    if "site" in holder:
        holder["site"].close()


@pytest.fixture
def bench(pool: dict[str, Any]) -> Iterator[Bench]:
    site = pool.get("site")
    if site is None or not healthy(site):
        if site is not None:
            site.close()
        pool["site"], pool["base"] = new_site()
    b = Bench(pool["site"], pool["base"])
    try:
        yield b
    finally:
        b.undo.close()
        b.reset_config()
