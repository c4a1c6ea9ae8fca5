"""The fault matrix: every step of a deploy (DESIGN §2) made to exit non-zero and to hang.

Each cell runs the real `watcher --once` against a real remote, supervisord, Gunicorn and
logging API, causes its fault for real, and checks the contract: outcome and exit code
(§2, §5), the old revision served throughout a failure before the switch (a thread polls
/healthz for the whole run) and served again after a rollback, state.json consistent with
`current`, the failed commit remembered as bad, the report delivered or spooled, and then
the next good commit deploying normally.

Expected outcomes (exit code in brackets) and how each fault is caused; all real faults:

| cell               | expected        | how it is caused                                         |
|--------------------|-----------------|----------------------------------------------------------|
| resolve-exit       | transient [3]   | the remote repository moved away (ls-remote fails)       |
| resolve-hang       | transient [3]   | git.remote a TCP server that accepts and never answers   |
| fetch-exit         | transient [3]   | the new commit's object deleted from the remote (put     |
|                    |                 | back after): ls-remote works, `git fetch` fails          |
| fetch-hang         | transient [3]   | the mirror's `url.<stall>.insteadOf` sends the fetch to  |
|                    |                 | a TCP server that accepts and never answers; git 3s      |
| export-exit        | failed [1]      | `git archive` exits 128: a required smudge filter        |
|                    |                 | (`false`) named by the commit's .gitattributes           |
| export-hang        | failed [1]      | the same filter as `sleep 30`; git.timeout 3s            |
| export-oserr       | failed [1]      | releases/ immutable (`chattr +i`): mkdir fails for root  |
| shared-exit        | failed [1]      | build.shared names `.env`: not in shared/ nor release    |
| shared-hang        | (no test)       | the step runs no subprocess, only local file calls with  |
|                    |                 | no timeout: only a stalled file system could hang it     |
| venv-exit          | failed [1]      | requirements.txt names a package the wheel cache lacks   |
| venv-hang          | failed [1]      | new requirements, pip --index-url a stalled server; 8s   |
| check-exit         | failed [1]      | STATICFILES_DIRS not a list: system check error E001     |
| check-hang         | failed [1]      | AppConfig.ready() sleeps 30s; django.timeout 3s          |
| check-wsgi         | failed [1]      | wsgi.py raises at import though `manage.py check` passes |
|                    |                 | (the import gate; Gunicorn's master keeps its pid)       |
| migrate-exit       | failed [1]      | a RunPython migration raises                             |
| migrate-hang       | failed [1]      | a RunPython migration sleeps 30s; django.timeout 3s      |
| collectstatic-exit | failed [1]      | a STORAGES staticfiles backend whose post_process raises |
| collectstatic-hang | failed [1]      | the same post_process sleeps 30s; django.timeout 3s      |
| pre_switch-exit    | failed [1]      | hook `["false"]`                                         |
| pre_switch-hang    | failed [1]      | hook `["sleep", "30"]`; hooks.timeout 2s                 |
| smoke-exit         | failed [1]      | /healthz answers 500 in the new release (any server)     |
| smoke-hang         | failed [1]      | /healthz sleeps 30s in the new release; django.timeout 8s|
| reload-exit        | rolled_back [1] | new requirements (stop+start) and a gunicorn.conf.py     |
|                    |                 | that raises: the program goes to BACKOFF                 |
| reload-hang        | rolled_back [1] | reload = "restart"; supervisord SIGSTOPped as watcher    |
|                    |                 | stops the program (supervisor.timeout 2s), SIGCONT once  |
|                    |                 | the reload step has failed                               |
| reload-down        | transient [3]   | supervisord SIGKILLed before the run (Gunicorn, orphaned,|
|                    |                 | keeps serving): nothing switched, nothing marked bad     |
| health-exit        | rolled_back [1] | /healthz answers 500 when Gunicorn serves it (the smoke  |
|                    |                 | requests, through Django's test client, pass); health 3s |
| health-hang        | rolled_back [1] | /healthz sleeps 30s when Gunicorn serves it; health 3s   |
| post_switch-exit   | succeeded [0]   | hook `["false"]`                                         |
| post_switch-hang   | succeeded [0]   | hook `["sleep", "30"]`; hooks.timeout 2s                 |
| report-exit        | succeeded [0]   | the logging API refuses connections: report spooled      |
| report-hang        | succeeded [0]   | the API holds requests (`slow`); timeout 1s, budget 3s   |

A transient failure (remote or supervisord unreachable, exit 3) has no deploy outcome in §7,
so no report is sent; `last_check.result` says "transient", the half-built release is gone,
nothing is switched and the commit is not marked bad, so the next check retries it.

The cells share one site (building its first venv takes most of a fresh site's cost); each
cell starts from a healthy site on the last good commit and, if the one before it left the
site in any other state, gets a fresh site instead.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.faults import (
    Bench,
    Poller,
    StalledServer,
    WatcherProc,
    complete_release,
    event,
    git_config,
    immutable,
    loose_object,
    step_end,
)
from support.site import TOKEN, Site, trash_emptied

from watcher.engine.steps import TABLE

pytestmark = pytest.mark.slow

# What a failure of each step means comes from the engine's one step table.
ABORTS = {k.name for k in TABLE if k.on_failure == "abort"}
ROLLS_BACK = {k.name for k in TABLE if k.on_failure == "roll_back"}


@dataclass(frozen=True)
class Cell:
    step: str
    fault: str

    @property
    def id(self) -> str:
        return f"{self.step}-{self.fault}"

    @property
    def outcome(self) -> str:
        if self.step in ("resolve", "fetch") or self.id == "reload-down":
            return "transient"
        if self.step in ABORTS:
            return "failed"
        if self.step in ROLLS_BACK:
            return "rolled_back"
        return "succeeded"

    @property
    def exit_code(self) -> int:
        return {"transient": 3, "failed": 1, "rolled_back": 1, "succeeded": 0}[self.outcome]


CELLS = [Cell(step, fault) for step, fault in [
    ("resolve", "exit"), ("resolve", "hang"),
    ("fetch", "exit"), ("fetch", "hang"),
    ("export", "exit"), ("export", "hang"), ("export", "oserr"),
    ("shared", "exit"),
    ("venv", "exit"), ("venv", "hang"),
    ("check", "exit"), ("check", "hang"), ("check", "wsgi"),
    ("migrate", "exit"), ("migrate", "hang"),
    ("collectstatic", "exit"), ("collectstatic", "hang"),
    ("pre_switch", "exit"), ("pre_switch", "hang"),
    ("smoke", "exit"), ("smoke", "hang"),
    ("reload", "exit"), ("reload", "hang"), ("reload", "down"),
    ("health", "exit"), ("health", "hang"),
    ("post_switch", "exit"), ("post_switch", "hang"),
    ("report", "exit"), ("report", "hang"),
]]




# -- the faults: each arranges its cell and returns the sha the next check will see -------
def _views_with_healthz(body: str) -> str:
    return (Path(__file__).parents[1] / "examples/mysite/pages/views.py").read_text() + (
        "\n\n@never_cache\ndef healthz(request):  # the fault: overrides the healthy one\n"
        + body + "\n")


MIGRATION = """from django.db import migrations


def forwards(apps, schema_editor):
    {body}


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
"""

STORAGE = """import time

from django.contrib.staticfiles.storage import StaticFilesStorage


class FaultyStorage(StaticFilesStorage):
    def post_process(self, paths, dry_run=False, **options):
        {body}
        yield from ()
"""

STORAGES_SETTING = """
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "pages.storage.FaultyStorage"},
}
"""


def fault_resolve(b: Bench, fault: str) -> str:
    sha = b.commit_fault({}, "A commit behind an unreachable remote")
    if fault == "exit":
        remote = b.site.remote
        aside = remote.with_name(remote.name + ".aside")
        remote.rename(aside)
        b.undo.callback(aside.rename, remote)
    else:
        stall = b.undo.enter_context(StalledServer())
        b.configure({"git": {"timeout": '"3s"', "remote": f'"{stall.url}/x.git"'}})
    return sha


def fault_fetch(b: Bench, fault: str) -> str:
    sha = b.commit_fault({}, "A commit the remote cannot serve")
    if fault == "exit":
        obj = loose_object(b.site.remote, sha)
        aside = obj.with_name(obj.name + ".aside")
        obj.rename(aside)
        b.undo.callback(aside.rename, obj)
    else:
        stall = b.undo.enter_context(StalledServer())
        key = f"url.{stall.url}/x.git.insteadOf"
        git_config(b.mirror, key, str(b.site.remote))
        b.undo.callback(git_config, b.mirror, key, None)
        b.configure({"git": {"timeout": '"3s"'}})
    return sha


def fault_export(b: Bench, fault: str) -> str:
    if fault == "oserr":
        sha = b.commit_fault({}, "A commit with nowhere to go")
        b.undo.enter_context(immutable(b.site.root / "releases"))
        return sha
    sha = b.commit_fault({".gitattributes": "pages/marker.py filter=fault\n"},
                         "A file behind a filter driver")
    git_config(b.mirror, "filter.fault.smudge", "false" if fault == "exit" else "sleep 30")
    git_config(b.mirror, "filter.fault.required", "true")
    b.undo.callback(git_config, b.mirror, "filter.fault.smudge", None)
    b.undo.callback(git_config, b.mirror, "filter.fault.required", None)
    b.configure({"git": {"timeout": '"3s"'}})
    return sha


def fault_shared(b: Bench, fault: str) -> str:
    assert not (b.site.root / "shared" / ".env").exists()
    b.configure({"build": {"shared": '[".env", "data"]'}})
    return b.commit_fault({}, "Needs a .env nobody created")


def fault_venv(b: Bench, fault: str) -> str:
    reqs = b.site.read("requirements.txt")
    if fault == "exit":
        return b.commit_fault({"requirements.txt": reqs + "watcher-no-such-package==1.0\n"},
                              "Require a package the wheel cache lacks")
    stall = b.undo.enter_context(StalledServer())
    b.configure({"build": {"timeout": '"8s"', "pip_args": json.dumps(
        ["--index-url", f"{stall.url}/simple"])}})  # uv (the default) hangs on it
    return b.commit_fault({"requirements.txt": reqs + "# rebuilt\n"}, "New requirements")


def fault_check(b: Bench, fault: str) -> str:
    if fault == "exit":
        settings = b.site.read("mysite/settings.py")
        return b.commit_fault({"mysite/settings.py": settings + '\nSTATICFILES_DIRS = "x"\n'},
                              "A setting the system checks reject")
    if fault == "wsgi":
        wsgi = b.site.read("mysite/wsgi.py")
        return b.commit_fault({"mysite/wsgi.py": wsgi + "\nraise RuntimeError('no wsgi')\n"},
                              "A WSGI module that cannot be imported")
    b.configure({"django": {"timeout": '"3s"'}})
    apps = b.site.read("pages/apps.py")
    return b.commit_fault({"pages/apps.py": apps + (
        "\n    def ready(self):\n        import time\n        time.sleep(30)\n")},
        "An app that takes forever to start")


def fault_migrate(b: Bench, fault: str) -> str:
    body = "raise RuntimeError('migration fault')" if fault == "exit" else (
        "import time; time.sleep(30)")
    if fault == "hang":
        b.configure({"django": {"timeout": '"3s"'}})
    return b.commit_fault({"pages/migrations/0002_fault.py": MIGRATION.format(body=body)},
                          "A data migration")


def fault_collectstatic(b: Bench, fault: str) -> str:
    body = "raise RuntimeError('post_process fault')" if fault == "exit" else "time.sleep(30)"
    if fault == "hang":
        b.configure({"django": {"timeout": '"3s"'}})
    settings = b.site.read("mysite/settings.py")
    return b.commit_fault({"pages/storage.py": STORAGE.format(body=body),
                           "mysite/settings.py": settings + STORAGES_SETTING},
                          "A custom static files storage")


def fault_hook(b: Bench, fault: str, step: str) -> str:
    argv = '[["false"]]' if fault == "exit" else '[["sleep", "30"]]'
    b.configure({"hooks": {step: argv, "timeout": '"2s"'}})
    return b.commit_fault({}, f"A code change meeting a failing {step} hook")


def fault_reload(b: Bench, fault: str) -> str:
    if fault == "exit":
        conf = b.site.read("gunicorn.conf.py")
        return b.commit_fault({
            "requirements.txt": b.site.read("requirements.txt") + "# rebuilt\n",
            "gunicorn.conf.py": conf + "\nraise RuntimeError('gunicorn cannot start')\n",
        }, "New requirements and a Gunicorn config that cannot load")
    if fault == "down":
        sv = b.site.sv
        os.kill(sv.proc.pid, signal.SIGKILL)
        sv.proc.wait()

        def restart() -> None:
            sv.stop()  # the orphaned Gunicorn too
            sv.socket_path.parent.mkdir(exist_ok=True)
            sv.start()
        b.undo.callback(restart)
        return b.commit_fault({}, "A code change while supervisord is down")
    b.configure({"supervisor": {"timeout": '"2s"', "reload": '"restart"'}})
    return b.commit_fault({}, "A code change while supervisord hangs")


def fault_smoke(b: Bench, fault: str) -> str:
    body = ('    return HttpResponse("broken\\n", status=500)' if fault == "exit" else
            '    import time\n    time.sleep(30)\n    return HttpResponse("late\\n")')
    if fault == "hang":
        b.configure({"django": {"timeout": '"8s"'}})
    return b.commit_fault({"pages/views.py": _views_with_healthz(body)},
                          "A health view that fails wherever it is served")


def fault_health(b: Bench, fault: str) -> str:
    b.configure({"health": {"timeout": '"3s"'}})
    body = ('        return HttpResponse("broken\\n", status=500)' if fault == "exit" else
            '        import time\n        time.sleep(30)')
    return b.commit_fault({"pages/views.py": _views_with_healthz(
        '    if request.META.get("SERVER_SOFTWARE", "").startswith("gunicorn"):\n' + body
        + '\n    return HttpResponse(f"ok {revision()}\\n")')},
        "A health check that fails only when Gunicorn serves it")


def fault_report(b: Bench, fault: str) -> str:
    api = b.site.api
    if fault == "exit":
        api.refuse()
        b.undo.callback(api.accept)
    else:
        api.slow_s = 30
        api.mode = "slow"
        b.undo.callback(setattr, api, "mode", "ok")
        text = b.base_config.replace('budget = "5s"', 'budget = "3s"\ntimeout = "1s"')
        b.base_config, base = text, b.base_config
        b.undo.callback(setattr, b, "base_config", base)
        b.reset_config()
    return b.commit_fault({}, "A code change while the logging API is down")


FAULTS: dict[str, Callable[[Bench, str], str]] = {
    "resolve": fault_resolve, "fetch": fault_fetch, "export": fault_export, "shared": fault_shared,
    "venv": fault_venv, "check": fault_check, "migrate": fault_migrate,
    "collectstatic": fault_collectstatic, "reload": fault_reload, "health": fault_health,
    "smoke": fault_smoke,
    "report": fault_report,
    "pre_switch": lambda b, f: fault_hook(b, f, "pre_switch"),
    "post_switch": lambda b, f: fault_hook(b, f, "post_switch"),
}


# -- running a cell ---------------------------------------------------------------------
@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float


def run_watcher(b: Bench, cell: Cell) -> Run:
    started = time.monotonic()
    if cell.id != "reload-hang":
        res = b.site.watcher("--once", timeout=180)
        return Run(res.returncode, res.stdout, res.stderr, time.monotonic() - started)
    sv_pid = b.site.sv.proc.pid
    b.undo.callback(os.kill, sv_pid, signal.SIGCONT)
    proc = WatcherProc(b.site.config, "--once")
    try:
        proc.wait_for(event("supervisor.stop"), timeout=120)  # the restart has begun
        os.kill(sv_pid, signal.SIGSTOP)
        proc.wait_for(step_end("reload", "failed"), timeout=120)
        os.kill(sv_pid, signal.SIGCONT)
        code = proc.wait(timeout=180)
        out = proc.stdout()
        return Run(code, out, "".join(proc.lines), time.monotonic() - started)
    finally:
        proc.close()


def reports_for(site: Site, sha: str) -> list[dict[str, Any]]:
    return [r.json for r in site.api.requests
            if 200 <= r.status < 300 and isinstance(r.json, dict) and r.json.get("to_sha") == sha]


def spooled(site: Site) -> list[dict[str, Any]]:
    spool = site.root / ".watcher" / "spool"
    if not spool.is_dir():
        return []
    return [json.loads(p.read_text())["report"] for p in sorted(spool.glob("*.json"))]


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_fault_cell(bench: Bench, cell: Cell) -> None:
    """A step that exits non-zero or hangs ends in the outcome and exit code of DESIGN §2/§5,
    with the right revision served, state consistent, the report delivered or spooled, and
    the next good commit deploying normally."""
    site = bench.site
    old_sha = site.head()
    old_release = site.live_release()
    old_master = site.master_pid()
    sha = FAULTS[cell.step](bench, cell.fault)

    with Poller(site.port) as poll:
        run = run_watcher(bench, cell)
    output = run.stdout + run.stderr

    # Outcome and exit code.
    assert run.code == cell.exit_code, output[-4000:]
    if cell.outcome != "transient":
        assert run.stdout.startswith(f"{cell.outcome}: {sha[:12]}"), run.stdout
    assert TOKEN not in output
    assert TOKEN not in (site.root / ".watcher" / "state.json").read_text()

    # What is served, during and after.
    state = site.state()
    assert state["live"] == site.live_release(), "state.json and `current` disagree"
    assert complete_release(site.root)
    if cell.outcome == "succeeded":
        assert site.served_revision() == sha
        assert state["releases"][state["live"]]["sha"] == sha
    else:
        assert site.served_revision() == old_sha
        assert state["live"] == old_release
        assert not [n for n in site.releases() if n.endswith(sha[:12])], "release not removed"
    if cell.outcome in ("transient", "failed"):
        assert poll.samples, "the poller saw nothing"
        assert poll.bad(old_sha) == [], f"not the old revision, or an error: {poll.bad(old_sha)}"
        if cell.id != "reload-down":
            assert site.master_pid() == old_master, "Gunicorn's master was restarted"
    # A pruned venv is renamed to .trash-* and deleted after the run, in the background.
    assert trash_emptied(site.root), "a half-deleted or temp release or venv is left"
    venvs = site.root / "venvs"
    assert all((v / ".complete").exists() for v in venvs.iterdir()), "half-built venv left"

    # Bad commits: remembered when the deploy failed, not for transient or later failures.
    failed_step = {"check-wsgi": "check"}.get(cell.id, cell.step)
    if cell.outcome in ("failed", "rolled_back"):
        assert state["bad"][sha]["step"] == failed_step
    else:
        assert sha not in state["bad"]

    # The report.
    if cell.outcome == "transient":
        assert state["last_check"]["result"] == "transient"
        assert not reports_for(site, sha)
    elif cell.step == "report":
        assert not reports_for(site, sha)
        assert [r["to_sha"] for r in spooled(site)] == [sha]
        assert spooled(site)[0]["outcome"] == "succeeded"
    else:
        (report,) = reports_for(site, sha)
        assert report["outcome"] == cell.outcome
        if cell.outcome == "succeeded":
            assert report["error"] is None
            steps = {s["name"]: s["outcome"] for s in report["steps"]}
            assert steps[cell.step] == ("failed" if cell.fault == "exit" else "timeout")
        else:
            assert report["error"]["step"] == failed_step
    if cell.fault == "hang":
        assert run.seconds < 90, f"a hang took {run.seconds:.0f}s to give up"

    # The next good commit deploys normally (and delivers what was spooled).
    spooled_ids = [r["id"] for r in spooled(site)]
    bench.undo.close()
    bench.reset_config()
    good = bench.good_commit()
    res = site.watcher("--once", timeout=180)
    assert res.returncode == 0, res.stderr[-4000:]
    assert site.served_revision() == good
    state = site.state()
    assert state["releases"][state["live"]]["sha"] == good
    assert state["live"] == site.live_release()
    assert len(site.releases()) <= 3
    assert spooled(site) == []
    delivered = site.api.delivered_ids()
    assert all(i in delivered for i in spooled_ids)
