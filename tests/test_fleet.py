"""The [fleet] part against one real redis-server on a unix socket: config checks, the
per-commit migration lock with lease renewal and takeover, fleet-wide bad marks, rollout
slots, heartbeats, and Redis being unreachable."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.configs import minimal_config
from support.fixtures import run_cli
from support.services import Redis
from support.site import REPO_ROOT

from watcher.config import FleetConfig
from watcher.config_checks import check_fleet as check_config
from watcher.config_load import load
from watcher.daemon.loop import Daemon
from watcher.daemon.metrics import Metrics
from watcher.errors import ConfigError, FleetUnreachable, FleetWaitTimeout
from watcher.parts.fleet import Fleet

Make = Callable[..., Fleet]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Redis]:
    base = Path(tempfile.mkdtemp(prefix="wf", dir="/tmp"))
    server = Redis(base / "r").start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make(redis_server: Redis, request: pytest.FixtureRequest) -> Iterator[Make]:
    """`make(host, **FleetConfig)`: a Fleet for an app named after the test (its own keys)."""
    made: list[Fleet] = []
    app = request.node.name

    def factory(host: str, **kw: object) -> Fleet:
        cfg = FleetConfig(**{"redis_url": redis_server.url, "host": host, "lease": 2.0,
                             **kw})  # type: ignore[arg-type]
        fleet = Fleet(cfg, app)
        made.append(fleet)
        return fleet

    yield factory
    for fleet in made:
        fleet.close()


@pytest.mark.parametrize(("url", "error"), [
    ("redis://10.0.0.5:6379/0", None),
    ("rediss://watcher@redis.internal:6380/2", None),
    ("unix:///run/redis/redis.sock?db=1", None),
    ("unix:///run/redis/redis.sock", None),
    ("http://redis:6379", "must start with redis://"),
    ("redis://:hunter2@redis:6379/0", "must not carry a password"),
    ("redis:///0", "needs a host"),
    ("redis://redis:6379/zero", "must be a number"),
    ("unix://relative.sock", "absolute socket path"),
])
def test_redis_url_is_checked(url: str, error: str | None) -> None:
    """fleet.redis_url takes redis://, rediss:// and unix:// with a db, never a password."""
    cfg = FleetConfig(redis_url=url)
    if error is None:
        check_config(cfg, "w.toml")
    else:
        with pytest.raises(ConfigError, match=error):
            check_config(cfg, "w.toml")


def test_max_parallel_and_lease_are_checked() -> None:
    """max_parallel below 1 and a lease under a second are config errors naming the key."""
    with pytest.raises(ConfigError, match=r"fleet\.max_parallel"):
        check_config(FleetConfig(redis_url="redis://r/0", max_parallel=0), "w.toml")
    with pytest.raises(ConfigError, match=r"fleet\.lease"):
        check_config(FleetConfig(redis_url="redis://r/0", lease=0.5), "w.toml")


def test_host_defaults_to_the_hostname(make: Make) -> None:
    """Without fleet.host a server is named by its hostname."""
    import socket

    assert make("").host == socket.gethostname()


def test_one_server_migrates_the_others_wait_for_its_result(make: Make) -> None:
    """The first claim of a commit wins; a second gets nothing and its wait ends with "ok"
    as soon as the holder records it."""
    a, b = make("a"), make("b")
    lease = a.claim_migration("c0ffee")
    assert lease is not None
    assert b.claim_migration("c0ffee") is None
    threading.Timer(0.5, a.finish_migration, ("c0ffee", lease, True)).start()
    started = time.monotonic()
    assert b.wait_migration("c0ffee", timeout=10) == ("ok", None)
    assert time.monotonic() - started < 3
    assert a.claim_migration("c0ffee") is None  # done: nobody runs it again


def test_lease_is_renewed_while_the_holder_works(make: Make) -> None:
    """A holder busy for three leases keeps its lock: nobody else can claim it meanwhile."""
    a, b = make("a", lease=1.0), make("b", lease=1.0)
    lease = a.claim_migration("beef")
    assert lease is not None
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert b.claim_migration("beef") is None
        time.sleep(0.3)
    assert not lease.lost.is_set()
    a.finish_migration("beef", lease, True)


def test_a_killed_holder_is_taken_over_after_its_lease(make: Make, redis_server: Redis) -> None:
    """SIGKILL of the holder: its lease runs out and a waiter gets the lock to run it again."""
    code = (
        "import sys, time\n"
        "from watcher.config import FleetConfig\n"
        "from watcher.parts.fleet import Fleet\n"
        f"f = Fleet(FleetConfig(redis_url={redis_server.url!r}, host='dead', lease=2.0),"
        f" {'test_a_killed_holder_is_taken_over_after_its_lease'!r})\n"
        "assert f.claim_migration('feed') is not None\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        b = make("b")
        assert b.claim_migration("feed") is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        started = time.monotonic()
        result, lease = b.wait_migration("feed", timeout=15)
        assert result is None and lease is not None
        assert time.monotonic() - started <= 2.0 + 1.0
        b.finish_migration("feed", lease, True)
        assert make("c").wait_migration("feed", timeout=1) == ("ok", None)
    finally:
        proc.kill()
        proc.wait()


def test_a_failed_migration_marks_the_commit_bad_for_the_fleet(make: Make) -> None:
    """A failed migration is recorded as "failed" and the commit is bad on every server."""
    a, b = make("a"), make("b")
    lease = a.claim_migration("dead")
    assert lease is not None
    a.finish_migration("dead", lease, False, message="no such column")
    assert b.wait_migration("dead", timeout=1) == ("failed", None)
    mark = b.bad("dead")
    assert mark is not None and mark["host"] == "a" and mark["step"] == "migrate"
    assert set(b.bad_marks()) == {"dead"}


def test_waiting_for_a_migration_is_bounded(make: Make) -> None:
    """A holder that stays alive but never finishes makes waiters give up after fleet.wait."""
    a, b = make("a"), make("b")
    lease = a.claim_migration("slow")
    assert lease is not None
    with pytest.raises(FleetWaitTimeout, match="no migration result"):
        b.wait_migration("slow", timeout=1.0)
    a.finish_migration("slow", lease, True)


def test_at_most_max_parallel_servers_are_in_the_rollout(make: Make) -> None:
    """With max_parallel = 2 a third server waits for a slot and gets it when one frees."""
    a, b, c = (make(h, max_parallel=2) for h in "abc")
    with a.switch_slot(5), b.switch_slot(5):
        with pytest.raises(FleetWaitTimeout, match="no rollout slot"), c.switch_slot(0.5):
            pass
        got = threading.Event()

        def third() -> None:
            with c.switch_slot(10):
                got.set()

        t = threading.Thread(target=third)
        t.start()
        time.sleep(0.3)
        assert not got.is_set()
    t.join(timeout=5)
    assert got.is_set()


def test_heartbeats_list_every_server_and_flag_stale_ones(make: Make) -> None:
    """status --fleet reads every heartbeat; one older than three intervals is stale."""
    a = make("a")
    old = make("b")
    old.clock = lambda: time.time() - 600
    a.heartbeat(release="r2", sha="2" * 40, outcome="succeeded", interval=60)
    old.heartbeat(release="r1", sha="1" * 40, outcome="rolled_back", interval=60)
    servers = {s["host"]: s for s in a.servers()}
    assert servers["a"]["sha"] == "2" * 40 and not servers["a"]["stale"]
    assert servers["b"]["outcome"] == "rolled_back" and servers["b"]["stale"]


def test_unreachable_redis_is_transient(tmp_path: Path) -> None:
    """No Redis at the URL: every call raises FleetUnreachable (exit 3), quickly."""
    fleet = Fleet(FleetConfig(redis_url=f"unix://{tmp_path}/none.sock?db=0", host="a"), "app")
    started = time.monotonic()
    for call in (lambda: fleet.heartbeat(release=None, sha=None, outcome="x", interval=1),
                 lambda: fleet.claim_migration("abc"), fleet.probe):
        with pytest.raises(FleetUnreachable) as err:
            call()
        assert err.value.exit_code == 3
    assert time.monotonic() - started < 10


# The ACL docs/fleet.md tells operators to create: keep the two in step.
DOC_ACL = ("on", ">rw-secret-1", "resetkeys", "~watcher:aclapp:*", "resetchannels", "-@all",
           "+ping", "+select", "+get", "+set", "+del", "+mget", "+scan", "+hget", "+hset",
           "+hdel", "+hgetall", "+lpush", "+blpop", "+ltrim", "+expire", "+evalsha",
           "+script|load")


def test_probe_tells_a_read_only_user(redis_server: Redis, tmp_path: Path) -> None:
    """`watcher check`'s probe: True for the ACL user docs/fleet.md describes (which can do
    everything a deploy does), False for a read-only one; passwords come from
    fleet.password_file."""
    redis_server.cli("ACL", "SETUSER", "ro", "on", ">ro-secret-1", "~*", "+@read", "+ping")
    redis_server.cli("ACL", "SETUSER", "rw", *DOC_ACL)
    for user, writable in (("ro", False), ("rw", True)):
        secret = tmp_path / user
        secret.write_text(f"{user}-secret-1\n")
        url = f"unix://{user}@{redis_server.socket}?db=0"
        fleet = Fleet(FleetConfig(redis_url=url, password_file=str(secret), host="a",
                                  lease=2.0), "aclapp")
        assert fleet.probe() is writable
        if writable:  # every operation of a rollout works with the documented ACL
            lease = fleet.claim_migration("acl")
            assert lease is not None
            fleet.finish_migration("acl", lease, False, message="x")
            assert fleet.wait_migration("acl", 1) == ("failed", None)
            with fleet.switch_slot(1):
                fleet.heartbeat(release="r", sha="s", outcome="ok", interval=1)
            assert fleet.servers()[0]["host"] == "a" and "acl" in fleet.bad_marks()
            fleet.redis.hdel(f"{fleet.ns}:bad", "acl")
        fleet.close()


def test_a_heartbeat_is_one_round_trip(make: Make, redis_server: Redis) -> None:
    """A check that finds nothing new costs one Redis command, the heartbeat's SET, even on
    a new connection (no HELLO, no CLIENT SETINFO at connect)."""
    a = make("a")
    before = _commands(redis_server)
    a.heartbeat(release="r", sha="s", outcome="unchanged", interval=60)
    assert _commands(redis_server) - before == 1


def _commands(server: Redis) -> int:
    """Commands the server ran, less the INFO calls made to count them."""
    total = 0
    for line in server.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:"):
            total += int(line.split("calls=")[1].split(",")[0])
    return total


# -- the commands: status --fleet, check, /metrics ----------------------------------------
def _config(tmp_path: Path, redis_url: str, app: str, host: str = "web1") -> Path:
    return minimal_config(tmp_path, f'[fleet]\nredis_url = "{redis_url}"\nhost = "{host}"\n',
                          app=app)


def test_status_fleet_lists_servers_flags_stale_and_shows_the_split(
        redis_server: Redis, tmp_path: Path) -> None:
    """`status --fleet [--json]` lists each heartbeat, flags the stale one, and shows the
    servers still running a commit another server marked bad."""
    web1, web2, web3 = (Fleet(FleetConfig(redis_url=redis_server.url, host=h), "statusapp")
                        for h in ("web1", "web2", "web3"))
    web3.clock = lambda: time.time() - 3600
    new, old = "a" * 40, "b" * 40
    web1.heartbeat(release="r-new", sha=new, outcome="succeeded", interval=60)
    web2.heartbeat(release="r-old", sha=old, outcome="rolled_back", interval=60)
    web3.heartbeat(release="r-old", sha=old, outcome="succeeded", interval=60)
    web2.mark_bad(new, "health", "HTTP 500")
    config = _config(tmp_path, redis_server.url, "statusapp")
    res = run_cli("status", "--fleet", "--json", "--config", str(config))
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [s["host"] for s in data["servers"]] == ["web1", "web2", "web3"]
    assert data["stale"] == ["web3"] and data["split"] is True
    assert data["bad"][new]["live_on"] == ["web1"] and data["bad"][new]["host"] == "web2"
    text = run_cli("status", "--fleet", "--config", str(config)).stdout
    assert "STALE" in text.splitlines()[4] and "web3" in text.splitlines()[4]
    assert f"bad:   {new[:12]} (health on web2: HTTP 500); live on web1" in text


def test_status_fleet_without_redis_is_exit_3(tmp_path: Path) -> None:
    """Redis unreachable: `status --fleet` exits 3 (transient) and says so."""
    config = _config(tmp_path, f"unix://{tmp_path}/gone.sock?db=0", "x")
    res = run_cli("status", "--fleet", "--config", str(config))
    assert res.returncode == 3 and "FleetUnreachable" not in res.stdout
    assert "redis" in res.stderr


def test_check_reaches_redis_and_says_whether_it_can_write(
        redis_server: Redis, tmp_path: Path) -> None:
    """`watcher check` reports Redis writable, refuses a read-only user, and fails when Redis
    is unreachable, saying why; the password never shows. (The exit code is the sandbox's:
    its remote and supervisord fail their own checks.)"""
    redis_server.cli("ACL", "SETUSER", "ro2", "on", ">ro2-canary-secret", "~*", "+@read",
                     "+ping")
    res = run_cli("check", "--config", str(_config(tmp_path, redis_server.url, "chk")))
    assert "ok    fleet redis: " in res.stdout and "as host web1: can write" in res.stdout
    secret = tmp_path / "redis.pw"
    secret.write_text("ro2-canary-secret\n")
    config = _config(tmp_path, f"unix://ro2@{redis_server.socket}?db=0", "chk")
    config.write_text(config.read_text() + f'password_file = "{secret}"\n')
    res = run_cli("check", "--config", str(config))
    assert "FAIL  fleet redis: " in res.stdout and "refuses writes" in res.stdout
    assert "ro2-canary-secret" not in res.stdout + res.stderr
    res = run_cli("check", "--config",
                  str(_config(tmp_path, f"unix://{tmp_path}/gone.sock?db=0", "chk")))
    assert "FAIL  fleet redis: " in res.stdout and "ping: ConnectionError" in res.stdout


def test_the_daemon_labels_its_metrics_with_fleet_host(tmp_path: Path) -> None:
    """`watcher run` with [fleet] builds its /metrics with fleet.host (no Redis is needed to
    start: it is reached at the first check); without [fleet] the series carry no host."""
    fleet = '[fleet]\nredis_url = "redis://127.0.0.1:1/0"\nhost = "web-7"\n'
    daemon = Daemon(load(minimal_config(tmp_path, fleet), environ={}))
    daemon.metrics.check("unchanged")
    assert 'watcher_checks_total{host="web-7",result="unchanged"} 1.0' in (
        daemon.metrics.render().decode())
    (tmp_path / "alone").mkdir()
    alone = Daemon(load(minimal_config(tmp_path / "alone"), environ={}))
    assert "host=" not in alone.metrics.render().decode()


def test_metrics_carry_the_host_with_fleet() -> None:
    """With [fleet], every /metrics series is labelled with the server's host."""
    m = Metrics(host="web2")
    m.check("unchanged")
    m.deploy("succeeded", 3.0, at=1_700_000_000.0)
    m.live_revision("c" * 40)
    m.webhook("github", "queued")
    text = m.render().decode()
    assert 'watcher_checks_total{host="web2",result="unchanged"} 1.0' in text
    assert f'watcher_live_revision_info{{host="web2",sha="{"c" * 40}"}} 1.0' in text
    assert 'watcher_last_success_timestamp_seconds{host="web2"} 1.7e+09' in text
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples and all('host="web2"' in line for line in samples)
