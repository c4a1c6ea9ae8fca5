"""Three servers, one remote, one Redis (DESIGN §8), all real: one redis-server on a unix
socket, three app roots with their own supervisord and Gunicorn, one Nginx upstream over
them, one SQLite database outside every release. The tests share the sandbox and run in
order, each starting from the rollout the one before it left."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator

import pytest
from support.fleet import FleetSandbox, Run, runpython, wait_for
from support.load import Load

pytestmark = pytest.mark.slow
BOOT_S = 4.0  # how long the "slow to boot" version takes to import in each Gunicorn worker

WSGI = '''"""WSGI entry point{note}."""

import os
import sys
import time

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
if "gunicorn" in os.path.basename(sys.argv[0]):  # slow in the workers, not in the gate
    time.sleep({boot})
application = get_wsgi_application()
'''

HEALTHZ_BROKEN_ON_ONE = '''

@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Fails where MYSITE_BROKEN_HEALTH is set, when Gunicorn serves it (Django's test client
    in the smoke requests passes): one server of the fleet turns unhealthy after its switch."""
    import os

    served = request.META.get("SERVER_SOFTWARE", "").startswith("gunicorn")
    if served and os.environ.get("MYSITE_BROKEN_HEALTH"):
        return HttpResponse("broken\\n", status=500)
    return HttpResponse(f"ok {revision()}\\n", content_type="text/plain; charset=utf-8")
'''


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetSandbox]:
    sandbox = FleetSandbox(servers=3, lease="2s", max_parallel=1)
    try:
        yield sandbox
    finally:
        sandbox.close()


def _env(fleet: FleetSandbox, **values: str) -> None:
    """Set (or with "" remove) variables in every server's shared .env."""
    for server in fleet.servers:
        env = server.root / "shared" / ".env"
        lines = [ln for ln in env.read_text().splitlines()
                 if ln.split("=", 1)[0] not in values]
        lines += [f"{k}={v}" for k, v in values.items() if v]
        env.write_text("\n".join(lines) + "\n")


def _ok(runs: list[Run]) -> None:
    for run in runs:
        assert run.code == 0, run.log.read_text()[-4000:]


def test_the_first_rollout_migrates_once_across_three_servers(fleet: FleetSandbox) -> None:
    """Three watchers deploying the same commit at once: the RunPython migration runs
    exactly once, and all three serve the commit."""
    head = fleet.commit({"README.md": "three servers\n"}, "First rollout")
    _ok(fleet.once_all())
    assert [fleet.served(s) for s in fleet.servers] == [head] * 3
    assert len(fleet.migration_runs()) == 1, fleet.migration_runs()
    assert fleet.applied("0002_count_runs") == 1


def test_the_rollout_goes_one_server_at_a_time_without_failed_requests(
        fleet: FleetSandbox) -> None:
    """max_parallel = 1 and a version slow to boot: switches at least its boot time apart,
    its migration run once, and 0 failed requests through Nginx meanwhile."""
    head = fleet.commit({
        "mysite/wsgi.py": WSGI.format(note=", slow to boot", boot=BOOT_S),
        "pages/migrations/0003_count_runs.py": runpython("0003", "0002_count_runs"),
    }, "A version slow to boot, with a data migration")
    load = Load(fleet.nginx.url + "/healthz", rate=60, threads=3, max_seconds=240).start()
    runs = fleet.once_all()
    result = load.stop()
    _ok(runs)
    switches = sorted(t for t in (r.started("switch") for r in runs) if t is not None)
    assert len(switches) == 3
    gaps = [b - a for a, b in itertools.pairwise(switches)]
    assert min(gaps) >= BOOT_S, gaps
    assert [fleet.served(s) for s in fleet.servers] == [head] * 3
    assert sum(ln.startswith("0003 ") for ln in fleet.migration_runs()) == 1
    assert fleet.applied("0003_count_runs") == 1
    assert result.failed == 0, result.errors
    assert result.ok > 50


def test_without_fleet_the_switches_are_nearly_simultaneous(fleet: FleetSandbox) -> None:
    """Negative control: the same kind of push without [fleet] is not serialized: two
    servers switch less than one boot time apart (which [fleet] never allows), and all
    three within less than the two boot times a fleet rollout takes at least."""
    for server in fleet.servers:
        fleet.write_config(server, fleet=False)
    try:
        fleet.commit({"mysite/wsgi.py": WSGI.format(note=", slow to boot again", boot=BOOT_S)},
                     "Slow to boot, no migration")
        runs = fleet.once_all()
    finally:
        for server in fleet.servers:
            fleet.write_config(server, fleet=True)
    _ok(runs)
    switches = sorted(t for t in (r.started("switch") for r in runs) if t is not None)
    assert len(switches) == 3
    gaps = [b - a for a, b in itertools.pairwise(switches)]
    assert min(gaps) < BOOT_S and switches[-1] - switches[0] < 2 * BOOT_S, switches


def test_sigkill_of_the_migrating_watcher_another_server_finishes(
        fleet: FleetSandbox) -> None:
    """The watcher running a slow migration is killed (with its children): its lease runs
    out, another server runs the migration and the rollout completes; it is recorded once."""
    _env(fleet, MYSITE_MIGRATION_SLEEP="6")
    head = fleet.commit({
        "mysite/wsgi.py": WSGI.format(note="", boot=0),
        "pages/migrations/0004_count_runs.py": runpython("0004", "0003_count_runs", slow=True),
    }, "A slow data migration")
    runs = [fleet.start(s) for s in fleet.servers]
    try:
        wait_for(lambda: any(r.started("migrate") for r in runs), 180, "a migration to start")
        holder = next(r for r in runs if r.started("migrate"))
        time.sleep(1.0)  # well inside the RunPython's sleep
        fleet.kill_group(holder)
        others = [r.wait(300) for r in runs if r is not holder]
    finally:
        for r in runs:
            if r.proc.poll() is None:
                fleet.kill_group(r)
    _ok(others)
    took_over = [r for r in others
                 if any(e.get("event") == "fleet.migration_takeover" for e in r.events)]
    assert len(took_over) == 1 and took_over[0].started("migrate")
    _ok([fleet.start(holder.server).wait()])  # the killed server catches up at its next check
    assert [fleet.served(s) for s in fleet.servers] == [head] * 3
    assert fleet.applied("0004_count_runs") == 1
    assert sum(ln.startswith("0004 ") for ln in fleet.migration_runs()) == 1
    _env(fleet, MYSITE_MIGRATION_SLEEP="")


def test_one_unhealthy_server_stops_the_rollout_and_status_shows_the_split(
        fleet: FleetSandbox) -> None:
    """web1 switches, web2 fails its health check and rolls back (marking the commit bad for
    the fleet), web3 does not deploy it (`watcher plan` there says why first); `status
    --fleet` shows web1 alone on it. `watcher deploy SHA` on web3 then forces it and clears
    the fleet-wide mark, and a manual `watcher rollback` there marks it again."""
    web1, web2, web3 = fleet.servers
    before = fleet.served(web2)
    (web2.root / "shared" / ".env").write_text(
        (web2.root / "shared" / ".env").read_text() + "MYSITE_BROKEN_HEALTH=1\n")
    views = (fleet.work / "pages" / "views.py").read_text()
    views = views[:views.index("@never_cache\n@require_GET\ndef healthz")].rstrip() + "\n"
    head = fleet.commit({"pages/views.py": views + HEALTHZ_BROKEN_ON_ONE + _rest_of_views(
        fleet)}, "healthz fails where MYSITE_BROKEN_HEALTH is set")
    try:
        _ok([fleet.start(web1).wait()])
        assert fleet.start(web2).wait().code == 1
        plan = fleet.cli(web3, "plan", "--json")  # web3 has not seen it: the fleet's mark
        assert plan.returncode == 1, plan.stderr[-3000:]
        assert any(r.startswith("marked bad by web2 at step health")
                   for r in json.loads(plan.stdout)["refusals"]), plan.stdout
        third = fleet.start(web3).wait()
    finally:
        _env(fleet, MYSITE_BROKEN_HEALTH="")
    assert third.code == 1 and any(e.get("event") == "check.fleet_bad" for e in third.events)
    assert fleet.served(web1) == head
    assert fleet.served(web2) == before and fleet.served(web3) == before
    res = fleet.cli(web3, "status", "--fleet", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    hosts = {s["host"]: s for s in data["servers"]}
    assert hosts["web2"]["outcome"] == "rolled_back" and hosts["web3"]["check"] == "known_bad"
    assert data["bad"][head]["host"] == "web2" and data["bad"][head]["live_on"] == ["web1"]
    assert data["split"] is True
    forced = fleet.cli(web3, "deploy", head)  # the operator vouches for it: fleet-wide too
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert head not in json.loads(fleet.cli(web3, "status", "--fleet", "--json").stdout)["bad"]
    back = fleet.cli(web3, "rollback")  # a manual rollback marks it for the fleet again
    assert back.returncode == 0, back.stderr[-3000:]
    mark = json.loads(fleet.cli(web3, "status", "--fleet", "--json").stdout)["bad"][head]
    assert (mark["host"], mark["step"]) == ("web3", "rollback")


def test_redis_down_nothing_switches_and_the_next_check_completes(
        fleet: FleetSandbox) -> None:
    """Redis stopped: every server exits 3 with its live release untouched; Redis back: the
    next check rolls the commit out everywhere."""
    live = [s.live_release() for s in fleet.servers]
    head = fleet.commit({"README.md": "after the outage\n"}, "Deployed after Redis is back")
    fleet.redis.stop()
    try:
        runs = fleet.once_all()
        assert [r.code for r in runs] == [3, 3, 3]
        assert [s.live_release() for s in fleet.servers] == live
    finally:
        fleet.redis.start()
    _ok(fleet.once_all())
    assert [fleet.served(s) for s in fleet.servers] == [head] * 3


def _rest_of_views(fleet: FleetSandbox) -> str:
    """The views after healthz in the current views.py (index, visits)."""
    text = (fleet.work / "pages" / "views.py").read_text()
    start = text.index("def healthz")
    rest = text[start:]
    return "\n\n" + rest[rest.index("@never_cache"):]


FAILING = '''\
import os

from django.db import migrations


def forwards(apps, schema_editor):
    with open(os.environ["MYSITE_MIGRATION_LOG"], "a") as log:
        log.write("0005 ran on " + os.environ.get("MYSITE_SERVER", "?") + "\\n")
    raise RuntimeError("0005 cannot backfill the visits")


class Migration(migrations.Migration):
    dependencies = [("pages", "0004_count_runs")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
'''


def test_a_failed_migration_stops_every_server_before_its_switch(fleet: FleetSandbox) -> None:
    """Three servers at once on a commit whose migration raises: it runs once, on the server
    holding the lock; that server's deploy fails and marks the commit bad for the fleet, and
    the others, waiting for its result (or seeing the mark), fail without switching."""
    live = [s.live_release() for s in fleet.servers]
    served = [fleet.served(s) for s in fleet.servers]
    head = fleet.commit({"pages/migrations/0005_fails.py": FAILING}, "A backfill that fails")
    runs = fleet.once_all()
    assert [r.code for r in runs] == [1, 1, 1], [r.log.read_text()[-2000:] for r in runs]
    ran = [line for line in fleet.migration_runs() if line.startswith("0005 ")]
    assert len(ran) == 1, ran
    holder = ran[0].split()[-1]
    assert [s.live_release() for s in fleet.servers] == live
    assert [fleet.served(s) for s in fleet.servers] == served
    mark = json.loads(fleet.cli(fleet.servers[0], "status", "--fleet", "--json").stdout)["bad"]
    assert (mark[head]["host"], mark[head]["step"]) == (holder, "migrate"), mark
    assert "0005 cannot backfill the visits" in mark[head]["message"]
    others = [r for r, s in zip(runs, fleet.servers, strict=True) if s.name != holder]
    for run in others:  # waited for the result, or saw the mark: never built a switch
        assert any(e.get("event") in ("check.fleet_bad", "deploy.finished") for e in run.events)
        assert not any(e.get("event") == "step.start" and e.get("step") == "switch"
                       for e in run.events)
