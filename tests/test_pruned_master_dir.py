"""A Gunicorn master whose start release was pruned is restarted, never HUPed.

Rolling reloads, the code-only default, never move the master. Its working directory stays
the release it was started in, and after keep_releases code-only deploys that release is
pruned. On HUP Gunicorn checks its --chdir against os.getcwd(), which then fails. The master
exits, and supervisord's new master cannot bind, because the orphaned workers still hold the
port. The orphans keep serving whatever they ran: after a rollback by HUP, the broken
release. So watcher stops and starts a program whose master's directory is gone.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from support.site import (
    BROKEN_UNDER_GUNICORN,
    HEALTHZ,
    Site,
    log_events,
    settled,
    tail,
    trash_emptied,
)

pytestmark = pytest.mark.slow



def test_a_rollback_after_the_masters_release_was_pruned_restores_the_old_code(
        site_factory: Callable[..., Site]) -> None:
    """Code-only deploys prune the release the master started in; the next deploy fails its
    health check under Gunicorn, and its rollback restarts the program instead of a HUP that
    would kill the master: the old revision serves, from a master in the live release, and
    the next good commit deploys as usual."""
    site = site_factory(keep_releases=2)
    first = site.watcher("--once")
    assert first.returncode == 0, tail(first)
    master = site.master_pid()
    started_in = os.readlink(f"/proc/{master}/cwd")
    views = site.read("pages/views.py")
    assert HEALTHZ in views
    for n in range(3):
        site.commit({"pages/views.py": f"{views}\n# change {n}\n"}, f"Code change {n}")
        res = site.watcher("--once")
        assert res.returncode == 0, tail(res)
        assert "reload.rolling" in [e["event"] for e in log_events(res.stderr)], tail(res)
    good = site.head()
    assert trash_emptied(site.root), "pruned releases were not deleted"
    assert site.master_pid() == master
    assert os.readlink(f"/proc/{master}/cwd").endswith(" (deleted)"), started_in

    site.commit({"pages/views.py": views.replace(HEALTHZ, BROKEN_UNDER_GUNICORN + HEALTHZ)},
                "A health check that fails only under Gunicorn")
    res = site.watcher("--once")
    assert res.returncode == 1, tail(res)
    assert res.stdout.startswith("rolled_back:"), tail(res)
    gone = [e for e in log_events(res.stderr) if e["event"] == "reload.master_dir_gone"]
    assert gone and gone[0]["program"] == "mysite", tail(res)
    assert settled(site, good) == good, site.program_log()
    log = site.program_log(400)
    assert "No such file or directory" not in log and "Connection in use" not in log, log
    info = site.sv.rpc().getProcessInfo("mysite")
    assert info["statename"] == "RUNNING" and info["pid"] != master
    assert os.readlink(f"/proc/{info['pid']}/cwd") == str(
        (site.root / "releases" / site.live_release()).resolve())

    fixed = site.commit({"pages/views.py": f"{views}\n# fixed\n"}, "Health fixed")
    res = site.watcher("--once")
    assert res.returncode == 0, tail(res)
    assert settled(site, fixed) == fixed, site.program_log()
