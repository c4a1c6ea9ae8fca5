"""Every subprocess goes through here: argv lists, a timeout, the output's tail kept, secrets
scrubbed before anything is logged or reported. Long steps log a progress line now and then."""

from __future__ import annotations

import collections
import contextlib
import contextvars
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from watcher.errors import Interrupted, StepFailed
from watcher.log import scrub

TAIL_LINES = 60
TAIL_CHARS = 4000
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


_CHILDREN: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "watcher_children", default=None)


@contextlib.contextmanager
def tracking_children(directory: Path) -> Iterator[None]:
    """Record each child started in this block as a file `<directory>/<pid>` holding its
    start time, removed when it ends; what a SIGKILL leaves is found by `reap_orphans`."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = _CHILDREN.set(directory)
    try:
        yield
    finally:
        _CHILDREN.reset(token)


def reap_orphans(directory: Path) -> list[int]:
    """Kill the process groups of children recorded by a process that is gone."""
    killed: list[int] = []
    if not directory.is_dir():
        return killed
    for marker in directory.iterdir():
        if marker.name.isdigit() and _start_time(int(marker.name)) == marker.read_text():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(marker.name), signal.SIGKILL)  # the child leads its own group
                killed.append(int(marker.name))
        marker.unlink(missing_ok=True)
    return killed


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: tells a process from a later one that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _record_child(pid: int) -> Path | None:
    directory = _CHILDREN.get()
    if directory is None:
        return None
    marker = directory / str(pid)
    with contextlib.suppress(OSError):
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (_start_time(pid) or "").encode())
        finally:
            os.close(fd)
        return marker
    return None


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
) -> Result:
    """Run argv; raise StepFailed on a non-zero exit or a timeout when `check`.

    The child runs in its own session so a timeout kills its whole group (pip's builds,
    manage.py's threads) and nothing is left behind. With `stdout_path`, stdout goes to that
    file and only stderr is kept as output.
    """
    argv = tuple(str(a) for a in argv)
    started = time.monotonic()
    lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    out_file = stdout_path.open("wb") if stdout_path else None
    try:
        proc = subprocess.Popen(
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
    marker = _record_child(proc.pid)
    stream = proc.stderr if out_file else proc.stdout
    if stream is None:  # pragma: no cover - Popen always gives a pipe here
        raise RuntimeError("no output pipe")
    reader = threading.Thread(target=_read_lines, args=(stream, lines), daemon=True)
    reader.start()
    timed_out = False
    deadline = started + timeout
    next_progress = started + PROGRESS_EVERY
    exited = _ExitWaiter(proc)
    try:
        while True:
            now = time.monotonic()
            try:
                exited(max(0.0, min(deadline, next_progress, now + CANCEL_POLL) - now))
                break
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if CANCEL.is_set():
                    _kill_group(proc)
                    raise Interrupted(f"{step}: stopped by shutdown") from None
                if now >= deadline:
                    timed_out = True
                    _kill_group(proc)
                    break
                if now < next_progress:
                    continue
                last = scrub(lines[-1]) if lines else ""
                log.info("step.progress", step=step, elapsed_s=round(now - started, 1), last=last)
                next_progress = now + PROGRESS_EVERY
    finally:
        exited.close()
        if proc.poll() is None:  # an exception (KeyboardInterrupt) while waiting
            _kill_group(proc)
        if marker is not None:
            marker.unlink(missing_ok=True)
        reader.join(timeout=5)
        stream.close()
        if out_file:
            out_file.close()
    result = Result(
        argv=argv,
        returncode=proc.returncode,
        output=scrub(tail("\n".join(lines))),
        duration_s=time.monotonic() - started,
        timed_out=timed_out,
    )
    if check and not result.ok:
        raise failure(step, result, timeout)
    return result


def failure(step: str, result: Result, timeout: float) -> StepFailed:
    name = Path(result.argv[0]).name
    if result.timed_out:
        message = f"{name} timed out after {timeout:g}s"
    else:
        message = f"{name} exited with status {result.returncode}"
    return StepFailed(step, message, result.output, timed_out=result.timed_out)


class _ExitWaiter:
    """A wait(timeout) that wakes the moment the child exits.

    `Popen.wait(timeout)` polls with sleeps of up to 50 ms, which adds that much to every
    git and manage.py call of a deploy; a pidfd (Linux 5.3+) becomes readable at the exit.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        try:
            self.pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # pragma: no cover - older kernels, other systems
            self.pidfd = None

    def __call__(self, timeout: float) -> None:
        if self.pidfd is None:  # pragma: no cover
            self.proc.wait(timeout=timeout)
            return
        ready, _, _ = select.select([self.pidfd], [], [], timeout)
        if not ready:
            raise subprocess.TimeoutExpired(self.proc.args, timeout)
        self.proc.wait()

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _read_lines(stream: object, lines: collections.deque[str]) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        lines.append(raw.decode("utf-8", "replace").rstrip("\n"))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for children: ours without watcher's own variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    env.update(extra or {})
    return env
