"""The gate's Django boot without its imports: after a deploy, an interpreter of the live venv
imports Django's own modules and waits (`inrelease/warm_gate.py`); the next deploy of the
same venv hands it the gate's `manage.py shell -c ...` and its output pipe over a unix
socket, and the boot skips the ~0.25 s of imports. `runner.run` treats it as any child:
the same output tail, timeout, group kill and exit code.

Files in the state directory (`.watcher/`, the deploy user's only):
- `gate.sock`: the socket, present while a gate waits (one connection, then removed);
- `gate.json`: {pid, start, key} of the gate last started, so the next start leaves a
  waiting gate of the same key alone and stops any other.

The key is a digest of the venv's real path and of the environment the gate runs with (the
release path in it made generic): a gate of another venv (a requirements change) or started
under another environment (cron instead of Supervisord) is never used, and the gate runs
cold as before. Anything that goes wrong on the way (no gate, a dead one, a refusal) also
means a cold run, never a failed step.

Crash points: a kill of watcher before the hand-off leaves the gate waiting (the next deploy
uses it); after it, the gate's pid is in `.watcher/children/` like any step's child, and the
next start kills it (`orphans.reap_orphans`). A gate nobody uses exits after
`django.warm_gate` idle, or within seconds when its venv or its socket goes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from watcher.parts import fs
from watcher.parts.procs import start_time

log = structlog.get_logger()
SCRIPT = Path(__file__).resolve().parent / "inrelease" / "warm_gate.py"
PROTOCOL = 1  # of the hand-off with inrelease/warm_gate.py: part of every key
SOCKET = "gate.sock"
RECORD = "gate.json"
CONNECT_S = 1.0  # a waiting gate answers at once; a stuck one costs no more than this
EXIT_CODE_S = 1.0  # after it exited, its exit code is already in the socket


def key(venv: Path, env: Mapping[str, str], release: Path) -> str:
    """What a gate must have been started for to run a release's gate (with the version of
    this hand-off: a gate left by an older watcher is never used by a newer one)."""
    generic = {k: v.replace(str(release), "{release}") for k, v in env.items()}
    text = json.dumps([PROTOCOL, os.path.realpath(venv), sorted(generic.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Record:
    pid: int
    start: str
    key: str


def _read(state_dir: Path) -> _Record | None:
    try:
        data = json.loads((state_dir / RECORD).read_text(encoding="utf-8"))
        return _Record(int(data["pid"]), str(data["start"]), str(data["key"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(record: _Record) -> bool:
    return start_time(record.pid, running=True) == record.start


def start_later(state_dir: Path, python: Path, marker: Path, env: Mapping[str, str],
                gate_key: str, idle_s: float) -> None:
    """Start a gate for `gate_key` unless one already waits; stop a gate of another key."""
    record = _read(state_dir)
    if record is not None and _alive(record):
        if record.key == gate_key and (state_dir / SOCKET).exists():
            return
        stop(state_dir)
    proc = subprocess.Popen(  # nothing waits for it, on purpose (it outlives --once)
        [str(python), str(SCRIPT), str(state_dir / SOCKET), f"{idle_s:g}", str(marker)],
        cwd="/", env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    with contextlib.suppress(OSError), proc.stdin as key_pipe:  # type: ignore[union-attr]
        key_pipe.write(gate_key.encode() + b"\n")  # a pipe's buffer holds it: never blocks
    start = start_time(proc.pid, running=True)
    if start is None:
        return  # gone already (a venv that cannot run it): the next gate runs cold
    fs.write_new(state_dir / RECORD, json.dumps(
        {"pid": proc.pid, "start": start, "key": gate_key}).encode() + b"\n", mode=0o600)
    log.info("gate.warming", pid=proc.pid, idle_s=idle_s)


def stop(state_dir: Path) -> None:
    """End the recorded gate, if it still runs (its group: it leads one)."""
    record = _read(state_dir)
    if record is not None and _alive(record):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, signal.SIGTERM)
        _gone(record.pid)
    (state_dir / SOCKET).unlink(missing_ok=True)


def _gone(pid: int, within: float = 1.0) -> None:
    """Wait for a stopped gate to go; reap it when it is our child (a daemon's gate), so no
    zombie is left behind."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:  # not ours (a `--once` before us started it)
            if start_time(pid, running=True) is None:
                return
        time.sleep(0.01)


class Handed:
    """A run handed to a gate: not our child, so its exit code comes over the socket. What
    `runner.run` needs of a Popen: pid (its group), poll(), wait(), returncode, stdout; and
    `ended_fd`, readable once the gate sent its exit code (its output flushed, the app's
    atexit handlers run) or died: the runner need not wait for its interpreter's teardown
    (about 0.1 s with Django loaded), and kills its group as for every step."""

    def __init__(self, pid: int, conn: socket.socket, out_fd: int) -> None:
        self.pid = pid
        self.conn = conn
        self.ended_fd = conn.fileno()
        self.stdout: IO[bytes] | None = os.fdopen(out_fd, "rb", buffering=0)
        self.stderr: IO[bytes] | None = None
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and start_time(self.pid, running=True) is None:
            self._collect()
        return self.returncode

    def wait(self) -> int:
        """After the runner killed its group: the exit code it sent, else killed."""
        if self.returncode is None:
            self._collect()
        return self.returncode if self.returncode is not None else -signal.SIGKILL

    def _collect(self) -> None:
        """Its {"exit": code} line, sent before it exits; none: it was killed."""
        self.conn.settimeout(EXIT_CODE_S)
        data = b""
        with contextlib.suppress(OSError):
            while not data.endswith(b"\n") and (chunk := self.conn.recv(4096)):
                data += chunk
        self.conn.close()
        try:
            self.returncode = int(json.loads(data)["exit"])
        except (ValueError, KeyError, TypeError):
            self.returncode = -signal.SIGKILL


def hand(state_dir: Path, gate_key: str, argv: Sequence[str], cwd: Path,
         env: Mapping[str, str]) -> Handed | None:
    """Give the waiting gate this run; None (run it cold) when there is no usable gate."""
    record = _read(state_dir)
    if record is None or not _alive(record) or not (state_dir / SOCKET).exists():
        return None
    if record.key != gate_key:
        log.info("gate.cold", reason="the waiting gate is for another venv or environment")
        stop(state_dir)
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CONNECT_S)
    read_end, write_end = os.pipe()
    dir_fd = os.open(state_dir, os.O_PATH | os.O_DIRECTORY)
    try:  # through /proc/self/fd: a socket path is limited to 107 bytes, app.root is not
        conn.connect(f"/proc/self/fd/{dir_fd}/{SOCKET}")
        go = {"key": gate_key, "argv": list(argv), "cwd": str(cwd), "env": dict(env)}
        socket.send_fds(conn, [json.dumps(go).encode()], [write_end])
        answer = b""
        while not answer.endswith(b"\n") and (chunk := conn.recv(4096)):
            answer += chunk
        reply = json.loads(answer)
        if not reply.get("ok"):
            raise ValueError("refused")
        pid = int(reply["pid"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.info("gate.cold", reason=f"the waiting gate did not take the run: {exc}")
        conn.close()
        os.close(read_end)
        return None
    finally:
        os.close(write_end)  # the gate holds its own copy now, or never will
        os.close(dir_fd)
    log.info("gate.warm", pid=pid)
    return Handed(pid, conn, read_end)
