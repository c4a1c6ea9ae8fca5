"""Every subprocess goes through here: argv lists, a timeout, the output's tail kept, secrets
scrubbed before anything is logged or reported. Long steps log a progress line now and then."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import structlog

from watcher.errors import Interrupted, StepFailed
from watcher.log import scrub
from watcher.parts.orphans import record_child
from watcher.parts.run_failure import failure

TAIL_LINES = 60
TAIL_CHARS = 4000
TAIL_BYTES = 64 * 1024  # of output kept while a step runs; the report gets the last TAIL_CHARS
CHUNK = 64 * 1024
DRAIN_S = 0.25  # output still read after the step ended (what the killed group had written)
PROGRESS_EVERY = 10.0

log = structlog.get_logger()
# Set by the daemon on SIGTERM/SIGINT: a running child is killed and Interrupted raised.
CANCEL = threading.Event()
CANCEL_POLL = 0.2


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    output: str  # the scrubbed tail of stdout and stderr together
    duration_s: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


class Child(Protocol):
    """What `run` needs of a child: a Popen, or a run handed to a process that was started
    before (parts/warm_gate.py), which leads its own process group like a Popen here."""

    pid: int
    returncode: int | None
    stdout: IO[bytes] | None
    stderr: IO[bytes] | None

    def poll(self) -> int | None: ...
    def wait(self) -> int: ...


# Given argv, cwd and environment: a Child already running them, or None to start them here.
Handoff = Callable[[Sequence[str], Path, Mapping[str, str]], Child | None]

def tail(text: str) -> str:
    lines = text.splitlines()[-TAIL_LINES:]
    return "\n".join(lines)[-TAIL_CHARS:]


def run(
    argv: Sequence[str],
    *,
    step: str,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdout_path: Path | None = None,
    check: bool = True,
    handoff: Handoff | None = None,
) -> Result:
    """Run argv; raise StepFailed on a non-zero exit or a timeout when `check`.

    The child runs in its own session and process group. The step ends when the child exits
    or the timeout passes, whichever comes first; then whatever is left of its group
    (`sh -c 'sleep 20 &'`, pip's builds, manage.py's threads) is killed, and the output is
    read for at most `DRAIN_S` more: a grandchild holding the pipe cannot stretch the step.
    Limit: a descendant that calls `setsid` (a daemonizing program) leaves the group and
    is not killed; its output past the step's end is dropped, and it runs on.

    The output is read in chunks of `CHUNK` bytes into a buffer that keeps only the last
    `TAIL_BYTES`: a single line of 100 MB costs no more memory than a short one.
    With `stdout_path`, stdout goes to that file and only stderr is kept as output.
    `handoff` (not with `stdout_path`) may give the run to a process already waiting for it
    (stdout and stderr into one pipe, as here); when it does not, the child starts here.
    """
    argv = tuple(str(a) for a in argv)
    started = time.monotonic()
    out_file = stdout_path.open("wb") if stdout_path else None
    proc: Child | None = None
    if handoff is not None and out_file is None and cwd is not None:
        proc = handoff(argv, cwd, dict(env) if env is not None else dict(os.environ))
    if proc is None:
        proc = _start(argv, step, cwd, env, out_file)
    marker = record_child(proc.pid)
    stream = proc.stderr if out_file else proc.stdout
    if stream is None:  # pragma: no cover - Popen always gives a pipe here
        raise RuntimeError("no output pipe")
    os.set_blocking(stream.fileno(), False)
    output = _Tail()
    exited = _ExitWaiter(proc)
    try:
        timed_out = _watch(proc, exited, stream.fileno(), output, step, started + timeout)
    finally:
        exited.close()
        returncode = _kill_group(proc)  # the group's leftovers die with the step, whatever ended it
        if marker is not None:
            marker.unlink(missing_ok=True)
        output.drain(stream.fileno(), time.monotonic() + DRAIN_S)
        stream.close()  # no other thread reads it: closing never waits for a writer
        if out_file:
            out_file.close()
    result = Result(
        argv=argv,
        returncode=returncode,
        output=scrub(tail(output.text())),
        duration_s=time.monotonic() - started,
        timed_out=timed_out,
    )
    if check and not result.ok:
        raise failure(step, result.argv, result.returncode, result.output, timeout,
                      timed_out=result.timed_out)
    return result


def _start(argv: tuple[str, ...], step: str, cwd: Path | None, env: Mapping[str, str] | None,
           out_file: IO[bytes] | None) -> Child:
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out_file if out_file else subprocess.PIPE,
            stderr=subprocess.PIPE if out_file else subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        if out_file:
            out_file.close()
        raise StepFailed(step, f"cannot run {argv[0]}: {exc.strerror}") from None


def _watch(proc: Child, exited: _ExitWaiter, fd: int, output: _Tail,
           step: str, deadline: float) -> bool:
    """Read output until the child exits (False) or the deadline passes (True); a shutdown
    request raises Interrupted. Logs a progress line every PROGRESS_EVERY seconds."""
    started = time.monotonic()
    next_progress = started + PROGRESS_EVERY
    reading = True
    while True:
        now = time.monotonic()
        wait = max(0.0, min(deadline, next_progress, now + CANCEL_POLL) - now)
        if exited.wait(fd if reading else None, wait):
            return False
        if reading:
            reading = output.read(fd)
        now = time.monotonic()
        if CANCEL.is_set():
            raise Interrupted(f"{step}: stopped by shutdown")
        if now >= deadline:
            return True
        if now >= next_progress:
            log.info("step.progress", step=step, elapsed_s=round(now - started, 1),
                     last=scrub(output.last_line()))
            next_progress = now + PROGRESS_EVERY


class _Tail:
    """The last TAIL_BYTES of a child's output, read without blocking."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def read(self, fd: int) -> bool:
        """Take what is ready; False at end of file."""
        for _ in range(16):  # at most 16 chunks at a time, then the clock is looked at again
            try:
                chunk = os.read(fd, CHUNK)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            self.buf += chunk
            if len(self.buf) > 2 * TAIL_BYTES:
                del self.buf[:-TAIL_BYTES]
        return True

    def drain(self, fd: int, until: float) -> None:
        """What the group wrote before it died; never past `until`."""
        while (left := until - time.monotonic()) > 0:
            if not _ready([fd], left) or not self.read(fd):
                return

    def text(self) -> str:
        return bytes(self.buf[-TAIL_BYTES:]).decode("utf-8", "replace")

    def last_line(self) -> str:
        lines = bytes(self.buf[-TAIL_CHARS:]).decode("utf-8", "replace").splitlines()
        return lines[-1] if lines else ""


class _ExitWaiter:
    """Waits for the child's exit and its output at once, waking the moment it exits.

    `Popen.wait(timeout)` polls with sleeps of up to 50 ms, which adds that much to every
    git and manage.py call of a deploy; a pidfd (Linux 5.3+) becomes readable at the exit.
    The child is left unreaped (a zombie) until `_kill_group`, so its pid, which names its
    process group, cannot be reused before the group is killed.
    """

    def __init__(self, proc: Child) -> None:
        self.proc = proc
        # A handed-over run (parts/warm_gate.py) says it ended on this fd before its
        # interpreter's own teardown: that teardown is not waited for (the group is killed).
        self.ended: int | None = getattr(proc, "ended_fd", None)
        try:
            self.pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # pragma: no cover - older kernels, other systems
            self.pidfd = None

    def wait(self, fd: int | None, timeout: float) -> bool:
        """True once the child has exited; else returns when `fd` is readable or later."""
        if self.pidfd is None:  # pragma: no cover
            _ready([fd] if fd is not None else [], min(timeout, 0.05))
            return self.proc.poll() is not None
        exits = [self.pidfd] if self.ended is None else [self.pidfd, self.ended]
        return bool(set(exits) & _ready(exits if fd is None else [*exits, fd], timeout))

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _ready(fds: list[int], timeout: float) -> set[int]:
    """The fds readable (or closed) within `timeout` s; poll, not select: fds over 1023 too."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    if not fds:
        time.sleep(timeout)
        return set()
    return {fd for fd, _ in poller.poll(timeout * 1000)}


def _kill_group(proc: Child) -> int:
    """Kill what is left of the child's group; the child's exit code."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for children: ours without watcher's own variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    env.update(extra or {})
    return env
