"""Supervisord's programs: queries, starts, stops and reloads, polled to a bounded wait.
Only this module talks to supervisord, through its wire, `supervisor_link`, where faults and
socket and HTTP errors become `SupervisorFault` / `SupervisorUnreachable`.

Programs are named ``group:name``, or plain ``name`` meaning ``name:name`` (a ``[program:x]``
with ``numprocs = 1``); in a ``[group:g]`` or with ``numprocs > 1``: ``g:x`` / ``x:x_00``.
Starts and stops are sent with ``wait=False`` and polled here, so each wait is bounded by our
timeout, not by ``startsecs``/``stopwaitsecs``. Not thread-safe: one `Supervisor` a thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog

from watcher.errors import SupervisorFault
from watcher.parts.supervisor_link import Faults, SupervisorLink

RUNNING = "RUNNING"
STARTING = "STARTING"
STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL", "UNKNOWN"})
POLL_INTERVAL = 0.1
STOP_NOTE_S = 10.0  # how often a long stop (a warm shutdown) is logged as still under way


@dataclass(frozen=True)
class ProcessInfo:
    """One process as supervisord reports it (`supervisor.getProcessInfo`)."""

    name: str
    group: str
    statename: str
    pid: int
    start: int
    description: str
    spawnerr: str = ""
    exitstatus: int = 0

    @classmethod
    def from_rpc(cls, raw: dict[str, Any]) -> ProcessInfo:
        return cls(
            name=str(raw["name"]),
            group=str(raw["group"]),
            statename=str(raw["statename"]),
            pid=int(raw["pid"]),
            start=int(raw["start"]),
            description=str(raw.get("description", "")),
            spawnerr=str(raw.get("spawnerr", "")),
            exitstatus=int(raw.get("exitstatus", 0)),
        )


def _split_namespec(program: str) -> tuple[str, str]:
    """``g:x`` -> (g, x); ``x`` -> (x, x), as supervisord's `split_namespec` reads it."""
    group, _, name = program.partition(":")
    return group, name or group


class Supervisor:
    """A client for one supervisord; every call has `timeout` seconds to be answered."""

    def __init__(
        self, url: str, username: str = "", password: str = "", timeout: float = 10.0
    ) -> None:
        self._link = SupervisorLink(url, username, password, timeout)  # checks the URL
        self.url = url
        self.username = username
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Supervisor(url={self.url!r}, username={self.username!r})"

    def close(self) -> None:
        self._link.close()

    def _call(self, method: str, *args: Any, ok: tuple[int, ...] = ()) -> Any:
        """Call ``supervisor.<method>``; fault codes in `ok` return None instead of raising."""
        return self._link.call(method, *args, ok=ok)

    # -- queries ----------------------------------------------------------------------

    def check(self) -> str:
        """supervisord's own state: RUNNING, RESTARTING, SHUTDOWN or FATAL."""
        return str(self._call("getState")["statename"])

    def info(self, program: str) -> ProcessInfo:
        return ProcessInfo.from_rpc(self._call("getProcessInfo", program))

    def pid(self, program: str) -> int:
        info = self.info(program)
        if not info.pid:
            raise SupervisorFault(f"{program} has no pid: it is {info.statename}")
        return info.pid

    def program_command(self, program: str) -> str | None:
        """The configured command line of `program`, or None when supervisord cannot say."""
        configs = self._call("getAllConfigInfo", ok=(Faults.UNKNOWN_METHOD,)) or []
        group, name = _split_namespec(program)
        for entry in configs:
            if entry.get("group") == group and entry.get("name") == name:
                return str(entry["command"])
        return None

    def program_config(self, program: str) -> dict[str, Any] | None:
        """supervisord's config of `program` (stopwaitsecs, stopsignal, stopasgroup...), or
        None when it has no such program or cannot say."""
        configs = self._call("getAllConfigInfo", ok=(Faults.UNKNOWN_METHOD,)) or []
        group, name = _split_namespec(program)
        for entry in configs:
            if entry.get("group") == group and entry.get("name") == name:
                return dict(entry)
        return None

    # -- actions ----------------------------------------------------------------------

    def restart_workers(self, programs: list[str], start_timeout: float) -> list[ProcessInfo]:
        """Background workers (Celery and the like) onto the code behind their directory:
        all stopped at once with their own stopsignal (TERM: a warm shutdown that lets
        running tasks finish) and supervisord's `stopwaitsecs` before it kills, then all
        started at once and waited for RUNNING (`startsecs`). Never HUP: a worker re-reads
        nothing on HUP, or re-executes itself outside supervisord's view. Raises
        SupervisorFault naming the first worker that does not stop or start."""
        log = structlog.get_logger()
        graces = {}
        for program in programs:
            graces[program] = float((self.program_config(program) or {}).get("stopwaitsecs")
                                    or 10)
            log.info("supervisor.stop", program=program, signal="stopsignal", worker=True)
            self._call("stopProcess", program, False, ok=(Faults.NOT_RUNNING,))
        for program in programs:  # supervisord KILLs at stopwaitsecs: wait a little longer
            self.stop(program, wait_timeout=graces[program] + 10)
        for program in programs:
            log.info("supervisor.start", program=program, worker=True)
            self._call("startProcess", program, False, ok=(Faults.ALREADY_STARTED,))
        started = []
        for program in programs:
            info = self._wait(program, start_timeout, fail=STOPPED_STATES | {"BACKOFF"})
            log.info("supervisor.started", program=program, pid=info.pid, worker=True)
            started.append(info)
        return started

    def hup(self, program: str) -> None:
        structlog.get_logger().info("supervisor.hup", program=program)
        self._call("signalProcess", program, "HUP")

    def signal(self, program: str, name: str) -> None:
        """Send signal `name` (TTIN, TTOU...) to the program's process."""
        structlog.get_logger().info("supervisor.signal", program=program, signal=name)
        self._call("signalProcess", program, name)

    def start(self, program: str, wait_timeout: float) -> ProcessInfo:
        """Start `program` (already started is fine) and wait until it is RUNNING.

        Fails at the first BACKOFF, as ``supervisorctl start`` does: the program died
        before ``startsecs``; supervisord may still be retrying it in the background.
        """
        structlog.get_logger().info("supervisor.start", program=program)
        self._call("startProcess", program, False, ok=(Faults.ALREADY_STARTED,))
        info = self._wait(program, wait_timeout, fail=STOPPED_STATES | {"BACKOFF"})
        structlog.get_logger().info("supervisor.started", program=program, pid=info.pid)
        return info

    def launch(self, program: str) -> None:
        """Start `program` without waiting for `startsecs` (already started is fine): the
        caller watches it come up itself, with `down` telling it when it died."""
        structlog.get_logger().info("supervisor.launch", program=program)
        self._call("startProcess", program, False, ok=(Faults.ALREADY_STARTED,))

    def down(self, program: str) -> str:
        """Why `program` is not running nor starting ("" when it is): the state and
        supervisord's spawn error, as `start` reports them."""
        info = self.info(program)
        return _not_started(program, info) if info.statename in STOPPED_STATES | {"BACKOFF"} \
            else ""

    def stop(self, program: str, wait_timeout: float = 60.0) -> None:
        """Stop `program` and wait until it is down; a program not running is fine."""
        structlog.get_logger().info("supervisor.stop", program=program)
        self._call("stopProcess", program, False, ok=(Faults.NOT_RUNNING,))
        started = time.monotonic()
        deadline, next_note = started + wait_timeout, started + STOP_NOTE_S
        while (info := self.info(program)).statename not in STOPPED_STATES:
            now = time.monotonic()
            if now >= deadline:
                raise SupervisorFault(
                    f"{program} did not stop within {wait_timeout:g}s ({info.statename})"
                )
            if now >= next_note:  # a warm shutdown can wait minutes for a task: say so
                structlog.get_logger().info("supervisor.stopping", program=program,
                                            state=info.statename, waited_s=round(now - started),
                                            limit_s=round(wait_timeout))
                next_note = now + STOP_NOTE_S
            time.sleep(POLL_INTERVAL)

    def wait_running(self, program: str, timeout: float) -> ProcessInfo:
        """Poll until `program` is RUNNING; STOPPED or FATAL fail at once (EXITED may restart)."""
        return self._wait(program, timeout, fail=STOPPED_STATES - {"EXITED"})

    def reload(self, program: str, mode: str, wait_timeout: float) -> ProcessInfo:
        """Make `program` run the code now behind its ``--chdir``.

        ``hup``: HUP a RUNNING program (Gunicorn keeps its master pid and replaces its
        workers); a stopped one is started (first deploy); one in STARTING or BACKOFF,
        e.g. a failed release being rolled back, is stopped and started afresh.
        ``restart``: stop (when up) and start.
        """
        if mode not in ("hup", "restart"):
            raise ValueError(f"reload mode must be 'hup' or 'restart', not {mode!r}")
        before = self.info(program)
        if mode == "hup" and before.statename == RUNNING:
            self.hup(program)
            after = self.wait_running(program, wait_timeout)
            if after.pid != before.pid:
                # The master died on HUP and supervisord restarted it: running, but say so.
                structlog.get_logger().warning(
                    "supervisor.hup_pid_changed", program=program, old=before.pid, new=after.pid
                )
            return after
        if before.statename not in STOPPED_STATES:
            self.stop(program)
        return self.start(program, wait_timeout)

    def _wait(self, program: str, timeout: float, fail: frozenset[str]) -> ProcessInfo:
        deadline = time.monotonic() + timeout
        while True:
            info = self.info(program)
            if info.statename == RUNNING:
                return info
            detail = info.spawnerr or info.description or "see its log"
            if info.statename in fail:
                raise SupervisorFault(_not_started(program, info))
            if time.monotonic() >= deadline:
                raise SupervisorFault(
                    f"{program} not RUNNING within {timeout:g}s: {info.statename}, {detail}"
                )
            time.sleep(POLL_INTERVAL)


def _not_started(program: str, info: ProcessInfo) -> str:
    detail = info.spawnerr or info.description or "see its log"
    return f"{program} did not start: {info.statename}, {detail} (spawn error)"
