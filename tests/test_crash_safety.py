"""Crash safety: watcher SIGKILLed in the middle of each deploy step, then run again.

Each kill is placed by watching watcher's log stream for `step.start step=X` while the step
is held open for real: a stalled git server or package index, a git filter that sleeps, or
app code (AppConfig.ready, a migration, a storage, /healthz) and hooks that wait while a
"hold" file exists. After the kill: the lock file still names the dead watcher but nobody
holds it, `current` points at a complete release, state.json parses; the next
`watcher --once` takes the lock over, cleans up (half-built release or venv, a switch whose
reload or health check never finished) and ends with the head commit live and healthy.

`shared`, `switch` and `prune` cannot be held open (no subprocess, a few file system calls):
the kill is sent the moment their `step.start` shows up, so it lands in or just after them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.faults import (
    Bench,
    StalledServer,
    WatcherProc,
    complete_release,
    event,
    git_config,
    step_start,
)
from support.site import TOKEN, trash_emptied

from watcher.parts import lock
from watcher.parts.state import State, StateFile, write_atomic

pytestmark = pytest.mark.slow




class CurrentWatch:
    """Checks from a thread, every 20 ms, that `current` resolves to a complete release."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checks = 0
        self.broken: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.checks += 1
            if not complete_release(self.root):
                self.broken.append(os.readlink(self.root / "current"))
            self._stop.wait(0.02)

    def __enter__(self) -> CurrentWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- holding a step open --------------------------------------------------------------
def _hold(b: Bench, step: str) -> Path:
    """A file whose existence holds the step open; removed when the cell is undone. One per
    step: the slow code stays in the tree after its test, and must not hold later ones."""
    flag = b.site.base / f"hold-{step}"
    flag.write_text("")
    b.undo.callback(flag.unlink, missing_ok=True)
    return flag


def _wait_while(flag: Path, indent: str) -> str:
    return (f"{indent}import os, time\n{indent}_t = time.time() + 60\n"
            f"{indent}while os.path.exists({str(flag)!r}) and time.time() < _t:\n"
            f"{indent}    time.sleep(0.05)\n")


def hold_fetch(b: Bench) -> str:
    stall = b.undo.enter_context(StalledServer())
    key = f"url.{stall.url}/x.git.insteadOf"
    git_config(b.mirror, key, str(b.site.remote))
    b.undo.callback(git_config, b.mirror, key, None)
    return b.commit_fault({}, "A change fetched from a stalled server")


def hold_export(b: Bench) -> str:
    git_config(b.mirror, "filter.hold.smudge", "sleep 60")
    b.undo.callback(git_config, b.mirror, "filter.hold.smudge", None)
    return b.commit_fault({".gitattributes": "pages/marker.py filter=hold\n"},
                          "A file behind a slow filter")


def hold_venv(b: Bench) -> str:
    stall = b.undo.enter_context(StalledServer())
    b.configure({"build": {"pip_args": json.dumps(
        ["--index-url", f"{stall.url}/simple"])}})  # uv (the default) hangs on it
    return b.commit_fault({"requirements.txt": b.site.read("requirements.txt") + "# new\n"},
                          "New requirements from a stalled index")


def hold_check(b: Bench) -> str:
    flag = _hold(b, "check")
    return b.commit_fault({"pages/apps.py": b.site.read("pages/apps.py") + (
        "\n    def ready(self):\n" + _wait_while(flag, "        "))}, "A slow app start")


def hold_migrate(b: Bench) -> str:
    flag = _hold(b, "migrate")
    body = _wait_while(flag, "    ")
    return b.commit_fault({"pages/migrations/0002_slow.py": (
        "from django.db import migrations\n\n\ndef forwards(apps, schema_editor):\n" + body +
        "\n\nclass Migration(migrations.Migration):\n"
        "    dependencies = [('pages', '0001_initial')]\n"
        "    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]\n")},
        "A slow data migration")


def hold_collectstatic(b: Bench) -> str:
    flag = _hold(b, "collectstatic")
    storage = ("from django.contrib.staticfiles.storage import StaticFilesStorage\n\n\n"
               "class SlowStorage(StaticFilesStorage):\n"
               "    def post_process(self, paths, dry_run=False, **options):\n"
               + _wait_while(flag, "        ") + "        yield from ()\n")
    settings = b.site.read("mysite/settings.py") + (
        '\nSTORAGES = {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},'
        '\n            "staticfiles": {"BACKEND": "pages.storage.SlowStorage"}}\n')
    return b.commit_fault({"pages/storage.py": storage, "mysite/settings.py": settings},
                          "A slow static files storage")


def hold_hook(b: Bench, step: str) -> str:
    flag = _hold(b, step)
    b.configure({"hooks": {step: json.dumps(
        [["sh", "-c", f"while [ -e {flag} ]; do sleep 0.05; done"]])}})
    return b.commit_fault({}, f"A change meeting a slow {step} hook")


def hold_reload(b: Bench) -> str:
    """Stop+start reload; supervisord is SIGSTOPped once watcher has begun to stop the app."""
    b.configure({"supervisor": {"reload": '"restart"'}})
    b.undo.callback(os.kill, b.site.sv.proc.pid, signal.SIGCONT)
    return b.commit_fault({}, "A change reloaded by a hung supervisord")


def hold_health(b: Bench) -> str:
    """Held only when Gunicorn serves it: the smoke step's request (Django's test client, in
    the gate's boot) answers at once, or it would wait out the hold's 60 s before health."""
    flag = _hold(b, "health")
    views = b.site.read("pages/views.py") + (
        "\n\n@never_cache\ndef healthz(request):\n"
        '    if request.META.get("SERVER_SOFTWARE", "").startswith("gunicorn"):\n'
        + _wait_while(flag, "        ") +
        '    return HttpResponse(f"ok {revision()}\\n", content_type="text/plain")\n')
    return b.commit_fault({"pages/views.py": views}, "A slow health check")


def hold_report(b: Bench) -> str:
    b.site.api.slow_s = 30
    b.site.api.mode = "slow"
    b.undo.callback(setattr, b.site.api, "mode", "ok")
    return b.commit_fault({}, "A change reported to a hung logging API")


def no_hold(b: Bench) -> str:
    return b.commit_fault({}, "A code-only change")


# step -> (how it is held open, the event to kill at)
KILLS: dict[str, tuple[Callable[[Bench], str], Callable[[dict[str, Any]], bool]]] = {
    "fetch": (hold_fetch, step_start("fetch")),
    "export": (hold_export, step_start("export")),
    "shared": (no_hold, step_start("shared")),
    "venv": (hold_venv, step_start("venv")),
    "check": (hold_check, step_start("check")),
    "migrate": (hold_migrate, step_start("migrate")),
    "collectstatic": (hold_collectstatic, step_start("collectstatic")),
    "pre_switch": (lambda b: hold_hook(b, "pre_switch"), step_start("pre_switch")),
    "switch": (no_hold, step_start("switch")),
    "reload": (hold_reload, event("supervisor.stop")),
    "health": (hold_health, step_start("health")),
    "post_switch": (lambda b: hold_hook(b, "post_switch"), step_start("post_switch")),
    "prune": (no_hold, step_start("prune")),
    "report": (hold_report, event("deploy.finished")),
}
HELD = {"fetch", "export", "venv", "check", "migrate", "collectstatic", "pre_switch", "reload",
        "health", "post_switch", "report"}


@pytest.mark.parametrize("step", list(KILLS))
def test_kill_during_step(bench: Bench, step: str) -> None:
    """A watcher SIGKILLed during a step leaves `current` on a complete release and a lock the
    next run takes over; that run cleans up and deploys the head commit."""
    site = bench.site
    old_sha = site.head()
    hold, kill_at = KILLS[step]
    sha = hold(bench)
    lock_path = site.root / ".watcher" / "lock"

    proc = WatcherProc(site.config, "--once")
    try:
        with CurrentWatch(site.root) as watch:
            proc.wait_for(kill_at, timeout=120)
            if step == "reload":
                os.kill(site.sv.proc.pid, signal.SIGSTOP)
            if step in HELD:
                time.sleep(1.0)  # well inside the step, which is held open
            assert proc.proc.poll() is None, "watcher finished before the kill"
            assert lock.holder(lock_path) == proc.pid
            proc.kill()
            orphans = proc.orphans()
            print(f"kill during {step}: {len(orphans)} child process(es) outlived watcher")

            # Right after the kill.
            assert lock_path.read_text().strip() == str(proc.pid), "lock names the dead pid"
            assert lock.holder(lock_path) is None, "a dead watcher still holds the lock"
            assert complete_release(site.root)
            StateFile(site.root / ".watcher" / "state.json").load()  # parses
            assert not list((site.root / ".watcher").glob("state.corrupt-*"))
            if step not in ("reload", "health"):
                assert site.served_revision() in (old_sha, sha)

            # What a kill inside a state.json write leaves (see the test below), planted.
            stray = site.root / ".watcher" / "state.json.tmp-999999"
            stray.write_text('{"live": "half')

            # The next run, with the step no longer held open.
            bench.undo.close()
            bench.reset_config()
            again = site.watcher("--once", timeout=180)
            # The next run ends what the killed one left running (pip, migrate, a hook).
            assert proc.orphans() == [], "children of the killed watcher outlived the recovery"
    finally:
        proc.close()  # SIGKILLs any child of the killed run still alive
    assert again.returncode == 0, again.stderr[-4000:]
    assert TOKEN not in "".join(proc.lines) + again.stderr + again.stdout
    assert watch.checks > 10 and watch.broken == [], f"current broken: {watch.broken[:3]}"

    state = site.state()
    live = state["releases"][state["live"]]
    assert live["sha"] == sha and state["live"] == site.live_release()
    assert site.served_revision() == sha
    assert sha not in state["bad"]
    # Pruned trash is deleted in the background after the run (issue 12): gone soon.
    assert trash_emptied(site.root), "a half-deleted or temp release or venv is left"
    assert set(site.releases()) <= set(state["releases"]), "a half-built release is left"
    used = {os.readlink(site.root / "releases" / n / ".venv").split("/")[-1]
            for n in site.releases()}
    venvs = site.root / "venvs"
    assert {v.name for v in venvs.iterdir()} <= used
    assert all((v / ".complete").exists() for v in venvs.iterdir())
    assert not list(site.root.glob(".current-*"))
    assert not stray.exists(), "a dead writer's state.json temp file is left"
    assert lock.holder(lock_path) is None
    spool = site.root / ".watcher" / "spool"
    reports = [r for r in site.api.requests if isinstance(r.json, dict)
               and r.json.get("to_sha") == sha and 200 <= r.status < 300]
    spooled = [p for p in spool.glob("*.json") if sha in p.read_text()]
    print(f"kill during {step}: report of the deploy: {len(reports)} delivered, "
          f"{len(spooled)} spooled")
    if step in ("post_switch", "prune", "report"):
        # Killed after the release was recorded live: its report and history entry survive.
        assert reports or spooled, "the live deploy's report was lost"
        assert any(e.get("to_sha") == sha for e in state["history"]), "its history is lost"


# -- state.json under a tight loop of kills -------------------------------------------
def _doc(n: int) -> str:
    state = State(live=f"release-{n}", history=[
        {"n": n, "i": i, "pad": f"{n:08d}" * 120} for i in range(60)])
    return json.dumps(state.to_json(), indent=1, sort_keys=True)


def test_state_never_half_written(tmp_path: Path) -> None:
    """state.json survives hundreds of SIGKILLs landing inside `write_atomic`: every read
    back is one whole document, never a torn or empty one."""
    path = tmp_path / "state.json"
    write_atomic(path, _doc(0))
    rng = random.Random(1)  # noqa: S311 - kill timing, not a secret
    last = 0
    kills = 400
    for _ in range(kills):
        pid = os.fork()
        if pid == 0:  # the child: write bigger and bigger n until killed
            try:
                n = last
                while True:
                    n += 1
                    write_atomic(path, _doc(n))
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.012))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        text = path.read_text()
        data = json.loads(text)  # never torn
        n = int(data["live"].split("-")[1])
        assert text == _doc(n), "a document that was never written"
        assert n >= last
        last = n
        assert StateFile(path).load().live == f"release-{n}"
    leftovers = list(tmp_path.glob("state.json.tmp-*"))
    print(f"{kills} kills; {last} writes completed; {len(leftovers)} temp files left")
    assert last >= 20, "the children hardly wrote: nothing new was ever read back"
    assert leftovers, "no kill landed between the temp file and the rename"
    assert not list(tmp_path.glob("state.corrupt-*"))

