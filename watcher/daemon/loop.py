"""`watcher run`: the poll loop, hints from webhooks / `watcher trigger` / SIGUSR1, signals.

The loop runs checks on the main thread, one at a time. Hints (`hints.py`) only set a flag,
so any number of them during a deploy coalesce into one follow-up check. SIGTERM/SIGINT stop new
checks and cut short a deploy still before its switch (a deploy past its switch finishes
its reload and health check: `current` is never left switched without them).
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from watcher.config import Config, read_secret, server_name
from watcher.control import active_pause, schedule_of
from watcher.daemon.forges import watched
from watcher.daemon.hints import Hints
from watcher.daemon.metrics import Metrics
from watcher.daemon.webhooks import WebhookServer, send_trigger
from watcher.engine.deploy import Deployer, Outcome
from watcher.errors import (
    EXIT_OK,
    Interrupted,
    LockHeld,
    TransientError,
    WatcherError,
)
from watcher.kinds import DEPLOY_OUTCOMES
from watcher.parts import runner
from watcher.parts.state import write_atomic
from watcher.schedule import Clock, utc_now

log = structlog.get_logger()
JITTER = 0.10
BACKOFF_CAP = 300.0
UNHEALTHY_AFTER = 3  # consecutive failed checks before /healthz answers 503
LOCK_RETRY = 5.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def trigger_key_path(cfg: Config) -> Path:
    return cfg.state_dir / "trigger.key"


class Daemon:
    def __init__(self, cfg: Config, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.deployer = Deployer(cfg, clock)
        self.hints = Hints()
        # With [fleet] every series says which server it is from (fleet.host or hostname).
        self.metrics = Metrics(host=server_name(cfg) if cfg.fleet is not None else "")
        self.stopping = threading.Event()
        self.rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self.failures = 0
        self.checks = 0
        self.last: dict[str, Any] = {}
        self.server: WebhookServer | None = None
        self._term = False  # set by the SIGTERM/SIGINT handler
        self.clock = clock or utc_now
        self.metrics.paused_from(lambda: active_pause(cfg, self.clock()) is not None)

    # -- lifecycle -----------------------------------------------------------------------
    def run(self, max_checks: int | None = None) -> int:
        self.deployer.layout.prepare()
        runner.CANCEL.clear()
        self._write_trigger_key()
        self.server = WebhookServer(
            self.cfg.webhook.listen, watched(self.cfg.git.branch, self.cfg.git.tag_pattern),
            self._secret, self.hints.hint,
            self.health, self.metrics, self._trigger_key,
        )
        restore = self._signals()
        try:
            self.server.start()
            log.info("daemon.started", interval_s=self.cfg.git.interval,
                     branch=self.cfg.git.branch)
            while not self.stopping.is_set():
                delay = self.tick()
                if max_checks is not None and self.checks >= max_checks:
                    break
                self.hints.wait(delay)
        finally:
            self.server.stop()
            restore()
            runner.CANCEL.clear()  # the flag is process-wide: leave none behind for others
            self.deployer.stop_warm_gate()  # a stopped daemon leaves no process behind
            log.info("daemon.stopped", checks=self.checks)
        return EXIT_OK

    def stop(self, *_: object) -> None:
        if not self.stopping.is_set():
            log.info("daemon.stopping")
        self.stopping.set()
        runner.CANCEL.set()
        self.hints.hint("shutdown")

    def _signals(self) -> Callable[[], None]:
        """SIGTERM/SIGINT stop, SIGUSR1 hints; returns the function that undoes this.

        Python runs a handler between two bytecodes of the main thread, wherever it is: one
        that logs or sets an Event there deadlocks on a lock the interrupted code holds
        (structlog's write lock, the Event's own) or splits a log line. So the C-level
        handler only writes the signal number to a pipe (`set_wakeup_fd`), and a thread
        reads it and acts. A SIGTERM whose byte a full pipe dropped is still seen through
        `_term`, set by the (otherwise empty) Python-level handler.
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if signum != signal.SIGUSR1:
                self._term = True  # a plain store: no lock, no I/O

        previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNALS}
        reader = threading.Thread(target=self._read_signals, args=(read_fd,),
                                  name="watcher-signals", daemon=True)
        reader.start()

        def restore() -> None:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(write_fd)  # the reader sees end of file and returns
            reader.join(timeout=5)
            os.close(read_fd)

        return restore

    def _read_signals(self, fd: int) -> None:
        while data := os.read(fd, 512):
            if signal.SIGUSR1 in data:
                self.hints.hint("sigusr1")
            if self._term or any(sig in data for sig in _SIGNALS if sig != signal.SIGUSR1):
                self.stop()

    # -- one tick ------------------------------------------------------------------------
    def tick(self) -> float:
        """One check; returns how long to wait for the next one (jittered, backed off)."""
        self.checks += 1
        interval = self.cfg.git.interval
        try:
            outcome = self.deployer.check_once(trigger=self.hints.take_trigger())
        except LockHeld as exc:
            log.info("check.lock_held", detail=str(exc))
            return self._jitter(min(interval, LOCK_RETRY))
        except Interrupted:
            log.info("check.interrupted")
            return 0.0
        except TransientError as exc:
            self._failed("transient", str(exc))
            return self._jitter(min(BACKOFF_CAP, interval * 2 ** min(self.failures, 10)))
        except WatcherError as exc:
            self._failed("failed", str(exc))
            return self._jitter(interval)
        except Exception as exc:  # the daemon must not die of a bug in one check
            log.exception("check.crashed", error=type(exc).__name__)
            self._failed("failed", type(exc).__name__)
            return self._jitter(interval)
        self._succeeded(outcome)
        self.deployer.journal.flush()
        self.deployer.empty_trash()  # in the background, while the loop waits
        if outcome.outcome == "waiting":
            return self._jitter(self._until_hold_ends(interval))
        return self._jitter(interval)

    def _succeeded(self, outcome: Outcome) -> None:
        result = {"unchanged": "unchanged", "succeeded": "deployed", "skipped": "skipped",
                  "waiting": "waiting"}.get(outcome.outcome, "failed")
        self.metrics.check(result)
        self.metrics.waiting(outcome.outcome == "waiting")
        if outcome.outcome in DEPLOY_OUTCOMES:
            self.metrics.deploy(outcome.outcome, outcome.duration_s)
        if outcome.outcome in ("unchanged", "succeeded"):
            live_sha = outcome.sha  # (a skipped or waiting head is not live: read below)
        else:
            record = self.deployer.state_file.load().live_record()
            live_sha = record.sha if record else None
        if live_sha:
            self.metrics.live_revision(live_sha)
        self.failures = 0
        self.last = {"at": time.time(), "result": outcome.outcome, "live_sha": live_sha}

    def _failed(self, result: str, error: str) -> None:
        self.failures += 1
        self.metrics.check(result)
        self.last = {**self.last, "at": time.time(), "result": result, "error": error}
        log.warning("check.failed", result=result, error=error, consecutive=self.failures)

    def _until_hold_ends(self, interval: float) -> float:
        """While a head waits: the poll interval, or less when the pause's `until` or the
        next window opening comes sooner (so the deploy starts within a second of it)."""
        from watcher.gates import hold

        now = self.clock()
        held = hold(active_pause(self.cfg, now), schedule_of(self.cfg), now)
        if held is None or held.until is None:
            return interval
        return max(0.0, min(interval, (held.until - now).total_seconds() + 0.5))

    def _jitter(self, seconds: float) -> float:
        return max(0.0, seconds * (1 + self.rng.uniform(-JITTER, JITTER)))

    # -- providers for the webhook server ------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        healthy = self.failures < UNHEALTHY_AFTER
        return healthy, {"healthy": healthy, "consecutive_failures": self.failures,
                         "last_check": self.last, "checks": self.checks}

    def _secret(self) -> bytes | None:
        value = read_secret(self.cfg.webhook.secret_file, "webhook.secret_file")
        return value.encode() if value else None

    def _trigger_key(self) -> bytes | None:
        try:
            return trigger_key_path(self.cfg).read_bytes().strip()
        except OSError:
            return None

    def _write_trigger_key(self) -> None:
        path = trigger_key_path(self.cfg)
        if not path.exists():
            write_atomic(path, secrets.token_hex(32) + "\n")


def trigger(cfg: Config) -> int:
    """`watcher trigger`: sign a request with the daemon's trigger key and send it."""
    try:
        key = trigger_key_path(cfg).read_bytes().strip()
    except OSError as exc:
        raise TransientError(
            f"cannot read {trigger_key_path(cfg)} ({exc.strerror}); is `watcher run` started "
            "with this config, and are you its user?"
        ) from None
    status = send_trigger(cfg.webhook.listen, key)
    if status == 202:
        print("the daemon took the hint")
        return EXIT_OK
    raise TransientError(f"the daemon answered HTTP {status}")
