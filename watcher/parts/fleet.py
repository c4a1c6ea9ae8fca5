"""[fleet]: the watchers of several servers meet in Redis (DESIGN §8), through redis-py.

Keys, all under `watcher:<app>:` so several apps can share one Redis:

    migrate:<sha>     redis-py Lock: the server migrating that commit; lease renewed while held
    migrated:<sha>    "ok" or "failed", set by the holder before it lets go (kept 7 days)
    switch:<i>        redis-py Locks, i < max_parallel: a server between switch and health
    switch:free       a short list: a freed slot pushes to it, waiters BLPOP it to wake early
    bad               hash sha -> {host, step, message, at}: commits no server may switch to
    hb:<host>         heartbeat: live release, sha, last outcome, when (TTL one day)

Every Redis error is translated here into FleetUnreachable (transient, exit 3): the deploy
then neither migrates nor switches, and the live release keeps serving.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
import structlog
from redis.backoff import ExponentialBackoff
from redis.exceptions import LockError, RedisError
from redis.lock import Lock
from redis.retry import Retry

from watcher.config import FleetConfig, read_secret
from watcher.errors import FleetUnreachable, FleetWaitTimeout
from watcher.log import register_secret, scrub

log = structlog.get_logger()
T = TypeVar("T")
RESULT_TTL = 7 * 24 * 3600
HEARTBEAT_TTL = 24 * 3600


def connect(cfg: FleetConfig) -> redis.Redis:
    """A client for fleet.redis_url, the password read from its file now (rotation works)."""
    password = read_secret(cfg.password_file, "fleet.password_file") or None
    if password:
        register_secret(password)
    # Nothing sent at connect but AUTH (with a password): no CLIENT SETINFO, and RESP2, so
    # no HELLO. A `watcher --once` that finds nothing new then costs the heartbeat alone.
    quiet: dict[str, Any] = (
        {"driver_info": None} if "driver_info" in inspect.signature(redis.Redis).parameters
        else {"lib_name": None, "lib_version": None})
    return redis.Redis.from_url(
        cfg.redis_url, password=password, socket_timeout=5, socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 2), protocol=2, **quiet)


class Lease:
    """A redis-py Lock held with its TTL renewed (`reacquire`) every third of the lease by a
    thread, so it outlives a slow migration; a holder that dies stops renewing and the lock
    expires after at most one lease. `lost` is set if a renewal finds it no longer ours."""

    def __init__(self, lock: Lock, lease: float) -> None:
        self.lock = lock
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, args=(lease / 3,), daemon=True,
                                        name=f"lease {lock.name!r}")
        self._thread.start()

    def _renew(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.lock.reacquire()
            except (LockError, RedisError) as exc:
                log.error("fleet.lease_lost", lock=str(self.lock.name), error=str(exc))
                self.lost.set()
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(LockError, RedisError):  # expired: someone else may hold it
            self.lock.release()


class Fleet:
    def __init__(self, cfg: FleetConfig, app: str, client: redis.Redis | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.host = cfg.server()
        self.ns = f"watcher:{app}"
        self.redis = client if client is not None else connect(cfg)
        self.clock = clock

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except RedisError as exc:
            where = scrub(self.cfg.redis_url)
            raise FleetUnreachable(f"redis {where}: {what}: {type(exc).__name__}: "
                                   f"{scrub(str(exc))}") from exc

    def _lock(self, name: str) -> Lock:
        return Lock(self.redis, f"{self.ns}:{name}", timeout=self.cfg.lease,
                    sleep=min(0.5, self.cfg.lease / 10), thread_local=False)

    def _try(self, lock: Lock, wait: float) -> Lease | None:
        got = self._call("lock", lock.acquire, blocking=wait > 0,
                         blocking_timeout=wait if wait > 0 else None)
        return Lease(lock, self.cfg.lease) if got else None

    def close(self) -> None:
        self.redis.close()

    # -- `watcher check` ---------------------------------------------------------------
    def probe(self) -> bool:
        """Reach Redis; True when we can write (a SET with a short TTL), False when it
        answers but refuses writes (an ACL, a read-only replica). Raises FleetUnreachable."""
        self._call("ping", self.redis.ping)
        try:
            self.redis.set(f"{self.ns}:probe:{self.host}", "1", ex=10)
        except redis.exceptions.ResponseError as exc:
            log.warning("fleet.read_only", error=scrub(str(exc)))
            return False
        except RedisError as exc:
            raise FleetUnreachable(f"redis: write: {type(exc).__name__}: {exc}") from exc
        return True

    # -- heartbeat and `status --fleet` ------------------------------------------------
    def heartbeat(self, *, release: str | None, sha: str | None, outcome: str,
                  interval: float, check: str = "") -> None:
        """One SET with a TTL: the only round trip of a check that finds nothing new.
        `outcome` is the last deploy's, `check` what this check found."""
        doc = {"host": self.host, "release": release, "sha": sha, "outcome": outcome,
               "check": check, "at": round(self.clock(), 3), "interval": interval}
        self._call("heartbeat", self.redis.set, f"{self.ns}:hb:{self.host}",
                   json.dumps(doc), ex=HEARTBEAT_TTL)

    def servers(self) -> list[dict[str, Any]]:
        """Every server's last heartbeat, with its age and whether it is stale (older than
        three of that server's check intervals plus 30 s)."""
        keys = sorted(self._call("scan", lambda: list(
            self.redis.scan_iter(match=f"{self.ns}:hb:*", count=500))))
        docs = self._call("heartbeats", self.redis.mget, keys) if keys else []
        now, out = self.clock(), []
        for raw in docs:
            if raw is None:
                continue  # expired between SCAN and MGET
            doc = json.loads(raw)
            doc["age_s"] = round(max(0.0, now - float(doc.get("at", 0))), 1)
            doc["stale"] = doc["age_s"] > 3 * float(doc.get("interval") or 60) + 30
            out.append(doc)
        return out

    # -- fleet-wide bad marks ----------------------------------------------------------
    def mark_bad(self, sha: str, step: str, message: str) -> None:
        doc = {"host": self.host, "step": step, "message": message[:500],
               "at": round(self.clock(), 3)}
        self._call("mark bad", self.redis.hset, f"{self.ns}:bad", sha, json.dumps(doc))
        log.warning("fleet.marked_bad", sha=sha[:12], step=step)

    def clear_bad(self, sha: str) -> None:
        """Forget the commit's bad mark and a failed migration result (`deploy SHA`)."""
        self._call("clear bad mark", self.redis.hdel, f"{self.ns}:bad", sha)
        if self.migration_result(sha) == "failed":
            self._call("clear result", self.redis.delete, f"{self.ns}:migrated:{sha}")

    def bad(self, sha: str) -> dict[str, Any] | None:
        raw = self._call("bad marks", self.redis.hget, f"{self.ns}:bad", sha)
        return json.loads(raw) if raw else None

    def bad_marks(self) -> dict[str, dict[str, Any]]:
        raw = self._call("bad marks", self.redis.hgetall, f"{self.ns}:bad")
        return {_text(k): json.loads(v) for k, v in raw.items()}

    # -- migrations once per commit ----------------------------------------------------
    def migration_result(self, sha: str) -> str | None:
        raw = self._call("migration result", self.redis.get, f"{self.ns}:migrated:{sha}")
        return _text(raw) if raw else None

    def claim_migration(self, sha: str, wait: float = 0.0) -> Lease | None:
        """The commit's migration lock, when no result is recorded yet and we get it within
        `wait`; None when another server holds it or has already finished."""
        lease = self._try(self._lock(f"migrate:{sha}"), wait)
        if lease is not None and self.migration_result(sha) is not None:
            lease.release()  # the holder we waited for finished: nothing left to run
            return None
        return lease

    def finish_migration(self, sha: str, lease: Lease, ok: bool, step: str = "migrate",
                         message: str = "") -> None:
        """Record the result, then let go of the lock. Crash point: a holder killed between
        the two leaves the result set and the lock expiring; waiters read the result."""
        try:
            self._call("migration result", self.redis.set, f"{self.ns}:migrated:{sha}",
                       "ok" if ok else "failed", ex=RESULT_TTL)
            if not ok:
                self.mark_bad(sha, step, message)
        finally:
            lease.release()

    def wait_migration(self, sha: str, timeout: float) -> tuple[str | None, Lease | None]:
        """Wait for another server's migration of `sha`: ("ok"|"failed", None) once it is
        recorded, or (None, lease) when its holder died and the lock is ours to take over.
        Raises FleetWaitTimeout after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.migration_result(sha)
            if result is not None:
                return result, None
            left = deadline - time.monotonic()
            if left <= 0:
                raise FleetWaitTimeout(f"no migration result for {sha[:12]} after "
                                       f"{timeout:.0f}s (fleet.wait)")
            lease = self._try(self._lock(f"migrate:{sha}"), min(left, self.cfg.lease))
            if lease is not None:
                result = self.migration_result(sha)
                if result is not None:
                    lease.release()
                    return result, None
                log.warning("fleet.migration_takeover", sha=sha[:12], host=self.host)
                return None, lease

    # -- rolling switches --------------------------------------------------------------
    @contextlib.contextmanager
    def switch_slot(self, timeout: float) -> Iterator[int]:
        """One of `max_parallel` slots held from the switch until health passed (or the
        rollback ended). A server that dies in it frees it when its lease runs out."""
        deadline = time.monotonic() + timeout
        wake = f"{self.ns}:switch:free"
        while True:
            for i in range(self.cfg.max_parallel):
                lease = self._try(self._lock(f"switch:{i}"), 0)
                if lease is not None:
                    break
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FleetWaitTimeout(f"no rollout slot free after {timeout:.0f}s "
                                           f"(fleet.max_parallel = {self.cfg.max_parallel})")
                self._call("wait for a slot", self.redis.blpop, [wake],
                           timeout=max(0.1, min(1.0, left)))
                continue
            break
        log.info("fleet.slot", slot=i, host=self.host)
        try:
            yield i
        finally:
            lease.release()
            with contextlib.suppress(RedisError):  # waiters also wake by their BLPOP timeout
                pipe = self.redis.pipeline(transaction=False)  # one round trip
                pipe.lpush(wake, i)
                pipe.ltrim(wake, 0, 7)
                pipe.expire(wake, 60)
                pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
