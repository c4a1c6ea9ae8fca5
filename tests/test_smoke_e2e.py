"""Broken code never serves (issue 17), end to end: one sandbox (real git remote,
supervisord, Gunicorn serving the example site under steady load), `watcher --once` deploying
broken commits one after the other, then a good one.
Runtime: about 60-90 s on two loaded cores (one venv build, eight code-only deploys).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.load import Load, LoadResult
from support.site import Site, settled

pytestmark = pytest.mark.slow
RATE = 50  # requests per second on /healthz, straight to Gunicorn
# Issue 17's target is 1 s of 5xx for a release failing only under Gunicorn, measured by
# `make bench` (row f, on a quiet machine). Here, on a loaded CI machine, the test pins the
# fail-fast itself: a few seconds, where waiting out health.timeout would be 30 s.
HUP_WINDOW_S = 3.0

VIEWS = '''from django.http import HttpRequest, HttpResponse
from pages.models import Visit


def report(request: HttpRequest) -> HttpResponse:
    """A page the smoke requests ask for (health.smoke_paths)."""
    return HttpResponse("report ok")
'''
HEALTHZ = '''def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for watcher and load balancers; never touches the database."""
'''
URLS_ADD = '    path("report", smoke_views.report),\n]'


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """The example site, live, with /report in health.smoke_paths besides "/" (which
    writes a Visit row on every request)."""
    sandbox = Site(health_timeout="30s")
    try:
        text = sandbox.config.read_text()
        sandbox.config.write_text(text.replace(
            "[health]\n", '[health]\nsmoke_paths = ["/", "/report"]\nfailures = 3\n'))
        urls = sandbox.read("mysite/urls.py")
        urls = urls.replace("from pages import views", "from pages import smoke_views, views")
        sandbox.commit({"pages/smoke_views.py": VIEWS,
                        "mysite/urls.py": re.sub(r"\n\]\s*$", "\n" + URLS_ADD, urls) + "\n"},
                       "A report page")
        res = sandbox.watcher("--once", timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        yield sandbox
    finally:
        sandbox.close()


def deploy_under_load(site: Site, files: dict[str, str | None],
                      message: str) -> tuple[Any, LoadResult, str]:
    """Commit, then `watcher --once` while /healthz is requested steadily; the load goes on
    a second after watcher ends. The files are then put back in a commit that is not
    deployed, so the next test's change starts from the good code."""
    before = {rel: site.read(rel) if (site.work / rel).exists() else None for rel in files}
    sha = site.commit(files, message)
    load = Load(f"http://127.0.0.1:{site.port}/healthz", rate=RATE, threads=4,
                max_seconds=180).start()
    try:
        time.sleep(0.5)
        res = site.watcher("--once", timeout=300)
        time.sleep(1.0)
    finally:
        result = load.stop()
    site.commit(before, f"Undo: {message}")
    print(f"\n{message}: exit {res.returncode}, {result.total} requests, {result.failed} "
          f"failed {result.errors}, 5xx window {result.window():.2f} s; steps: "
          + ", ".join(f"{s['name']} {s['duration_s']:.2f}" for s in last_report(site)["steps"]))
    return res, result, sha


def last_report(site: Site) -> dict[str, Any]:
    doc: dict[str, Any] = site.api.requests[-1].json
    return doc


def assert_refused(site: Site, live: str, sha: str, res: Any) -> dict[str, Any]:
    """Outcome failed at step smoke, exit 1, nothing switched, the commit marked bad."""
    assert res.returncode == 1, res.stderr[-3000:]
    assert site.live_release() == live
    state = site.state()
    assert state["bad"][sha]["step"] == "smoke"
    report = last_report(site)
    assert report["outcome"] == "failed" and report["error"]["step"] == "smoke"
    assert not any(s["name"] == "switch" for s in report["steps"])
    return report


def view_change(site: Site, old: str, new: str) -> dict[str, str | None]:
    text = site.read("pages/views.py")
    assert old in text
    return {"pages/views.py": text.replace(old, new)}


def test_a_smoke_path_that_raises_is_refused(site: Site) -> None:
    """A view in smoke_paths that raises: refused before the switch, its traceback in the
    report, and not one 5xx served."""
    live = site.live_release()
    res, load, sha = deploy_under_load(site, {"pages/smoke_views.py": VIEWS.replace(
        'return HttpResponse("report ok")', 'raise KeyError("missing-total")')},
        "Report page raises")
    report = assert_refused(site, live, sha, res)
    error = report["error"]
    assert error["message"].startswith("GET /report (Host 127.0.0.1:")
    assert "raised KeyError" in error["message"]
    assert "smoke_views.py" in error["output_tail"] and "missing-total" in error["output_tail"]
    assert load.failed == 0 and load.total >= 50, load.errors


def test_a_health_view_answering_500_is_refused(site: Site) -> None:
    """A health view answering 500 for every request: refused before the switch, 0 5xx."""
    live = site.live_release()
    res, load, sha = deploy_under_load(site, view_change(
        site, HEALTHZ, HEALTHZ + '    return HttpResponse("down", status=500)\n'),
        "Health answers 500")
    report = assert_refused(site, live, sha, res)
    assert "GET /healthz" in report["error"]["message"]
    assert "answered 500" in report["error"]["message"]
    assert load.failed == 0 and load.total >= 50, load.errors


def test_health_host_missing_from_allowed_hosts(site: Site) -> None:
    """ALLOWED_HOSTS without the health URL's host: refused with an error naming the
    setting, nothing served differently."""
    live = site.live_release()
    settings = site.read("mysite/settings.py")
    res, load, sha = deploy_under_load(site, {"mysite/settings.py": settings.replace(
        'ALLOWED_HOSTS = ["127.0.0.1", "localhost"]', 'ALLOWED_HOSTS = ["example.com"]')},
        "ALLOWED_HOSTS without the health host")
    report = assert_refused(site, live, sha, res)
    assert "is not in ALLOWED_HOSTS" in report["error"]["message"]
    assert "ALLOWED_HOSTS" in res.stderr
    assert load.failed == 0, load.errors


def test_a_view_failing_only_under_gunicorn_is_rolled_back_fast(site: Site) -> None:
    """A health view that fails only when Gunicorn serves it passes the smoke requests, is
    switched in, and rolled back after health.failures 5xx: the 5xx window stays within
    the target."""
    live = site.live_release()
    res, load, sha = deploy_under_load(site, view_change(site, HEALTHZ, HEALTHZ + (
        '    if request.META.get("SERVER_SOFTWARE", "").startswith("gunicorn"):\n'
        '        raise RuntimeError("only under gunicorn")\n')), "Fails only under Gunicorn")
    assert res.returncode == 1, res.stderr[-3000:]
    report = last_report(site)
    assert report["outcome"] == "rolled_back"
    assert "3 times in a row" in report["error"]["message"]
    assert site.live_release() == live and site.state()["bad"][sha]["step"] == "health"
    health = next(s for s in report["steps"] if s["name"] == "health")
    assert health["duration_s"] < 5.0, health  # not health.timeout (30 s)
    assert load.window() <= HUP_WINDOW_S, (load.window(), load.errors)
    assert 0 < len(load.server_errors) < load.total


def test_smoke_writes_leave_nothing_and_a_good_release_deploys(site: Site) -> None:
    """The smoke request to "/" writes a row in a transaction that is rolled back; a good
    release then deploys as usual, with 0 failed requests under load."""
    status, before = site.get("/visits")
    assert status == 200
    sha = site.commit({"pages/good.txt": "good again\n"}, "A good change")
    runner = Load(f"http://127.0.0.1:{site.port}/healthz", rate=RATE, threads=4,
                  max_seconds=180).start()
    try:
        res = site.watcher("--once", timeout=300)
        time.sleep(0.5)
    finally:
        load = runner.stop()
    assert res.returncode == 0, res.stderr[-3000:]
    assert last_report(site)["outcome"] == "succeeded"
    smoke = next(s for s in last_report(site)["steps"] if s["name"] == "smoke")
    assert smoke["outcome"] == "ok"
    assert settled(site, sha) == sha
    assert site.get("/visits") == (200, before)
    assert load.failed == 0, load.errors
