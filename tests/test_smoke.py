"""Step 9a's smoke requests in a real release of the example site, run by a real Django boot
(the dev venv stands in for the release's venv): what fails, what it reports, and that
nothing a smoke request writes stays behind."""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.site import EXAMPLE

from watcher.config import DjangoConfig
from watcher.errors import StepFailed
from watcher.log import register_secret
from watcher.parts.django_findings import SmokeSpec
from watcher.parts.django_steps import Django

SHA = "0123456789abcdef0123456789abcdef01234567"
CANARY = "smoke-canary-secret-7c1e"
VIEWS = f'''
import os
from django.http import HttpResponse
from pages.models import Visit

def boom(request):
    raise ZeroDivisionError("division by zero near {CANARY}")

def five(request):
    return HttpResponse("broken", status=500)

def write(request):
    Visit.objects.create()
    return HttpResponse(f"{{Visit.objects.count()}}")

def slow(request):
    import time
    time.sleep(120)
    return HttpResponse("late")

def gunicorn_only(request):
    if request.META.get("SERVER_SOFTWARE", "").startswith("gunicorn"):
        return HttpResponse("broken under gunicorn", status=500)
    return HttpResponse("ok {SHA}")
'''
URLS = '''
from django.urls import path
from pages import smoke_views, views

urlpatterns = [
    path("", views.index),
    path("healthz", views.healthz),
    path("boom", smoke_views.boom),
    path("five", smoke_views.five),
    path("write", smoke_views.write),
    path("gunicorn-only", smoke_views.gunicorn_only),
    path("slow", smoke_views.slow),
]
'''


@pytest.fixture(scope="module")
def django() -> Iterator[Django]:
    """A release of the example site with test views, migrated, with REVISION = SHA."""
    base = Path(sys.prefix)
    release = Path(tempfile.mkdtemp(prefix="wsmoke", dir="/tmp")) / "rel"
    shutil.copytree(EXAMPLE, release, ignore=shutil.ignore_patterns(
        "data", "staticfiles", "__pycache__", ".venv", "*.pyc"))
    (release / ".venv").symlink_to(base)
    (release / "data").mkdir()
    (release / "REVISION").write_text(SHA + "\n")
    (release / "pages" / "smoke_views.py").write_text(VIEWS)
    (release / "mysite" / "urls.py").write_text(URLS)
    dj = Django(DjangoConfig(timeout=120), release)
    dj.migrate()
    try:
        yield dj
    finally:
        shutil.rmtree(release.parent, ignore_errors=True)


def visits(dj: Django) -> int:
    with sqlite3.connect(dj.release / "data" / "db.sqlite3") as db:
        return int(db.execute("SELECT count(*) FROM pages_visit").fetchone()[0])


def spec(path: str = "/healthz", *paths: str, host: str = "127.0.0.1:8000",
         expect: str = SHA) -> SmokeSpec:
    return SmokeSpec(f"http://{host}{path}", paths, expect)


def test_good_release_passes_in_the_gate_boot(django: Django) -> None:
    """With no migration pending, the gate's own boot requests the health path and each
    smoke path; all answer, the verdict passes."""
    found = django.inspect(gate=True, smoke=spec("/healthz", "/", "/gunicorn-only"))
    assert found.smoke is not None and not found.smoke.deferred
    assert [(r["path"], r["status"]) for r in found.smoke.results] == [
        ("/healthz", 200), ("/", 200), ("/gunicorn-only", 200)]
    assert found.smoke.rolled_back == ("default",)
    found.smoke.verdict()


def test_writes_are_rolled_back(django: Django) -> None:
    """A smoke request that writes to the database leaves nothing written."""
    before = visits(django)
    found = django.inspect(gate=True, smoke=spec("/healthz", "/", "/write", "/write"))
    assert found.smoke is not None
    found.smoke.verdict()
    assert [r["status"] for r in found.smoke.results] == [200, 200, 200, 200]
    assert visits(django) == before


def test_a_raising_view_fails_with_its_traceback_scrubbed(django: Django) -> None:
    """An exception in a smoke path fails the step; the message names path, Host and the
    exception, the output tail the traceback's last lines, with secrets masked."""
    register_secret(CANARY)
    found = django.inspect(gate=True, smoke=spec("/healthz", "/boom", "/"))
    assert found.smoke is not None
    with pytest.raises(StepFailed) as err:
        found.smoke.verdict()
    exc = err.value
    assert exc.step == "smoke"
    assert exc.message.startswith("GET /boom (Host 127.0.0.1:8000) raised ZeroDivisionError")
    assert "smoke_views.py" in exc.output_tail and "ZeroDivisionError" in exc.output_tail
    assert CANARY not in exc.message + exc.output_tail
    assert [r["status"] for r in found.smoke.results] == [200, None, 200]  # one bad, others on


def test_a_health_path_answering_500_fails(django: Django) -> None:
    """A 5xx answer fails the step with its status."""
    found = django.inspect(gate=True, smoke=spec("/five"))
    assert found.smoke is not None
    with pytest.raises(StepFailed, match=r"GET /five \(Host 127.0.0.1:8000\) answered 500"):
        found.smoke.verdict()


def test_health_body_without_the_new_sha_fails(django: Django) -> None:
    """With expect_revision, a health body lacking the new sha fails; smoke paths other than
    the health path are not held to it."""
    other = "f" * 40
    found = django.inspect(gate=True, smoke=spec("/healthz", "/", expect=other))
    assert found.smoke is not None
    with pytest.raises(StepFailed, match="without the new revision ffffffffffff"):
        found.smoke.verdict()
    assert [r["problem"] for r in found.smoke.results][1] == ""


def test_health_host_not_in_allowed_hosts(django: Django) -> None:
    """A health URL whose host ALLOWED_HOSTS lacks fails with an error naming the setting,
    before any request."""
    found = django.inspect(gate=True, smoke=spec(host="health.internal:8000"))
    assert found.smoke is not None and found.smoke.results == ()
    with pytest.raises(StepFailed) as err:
        found.smoke.verdict()
    assert "'health.internal:8000' is not in ALLOWED_HOSTS" in err.value.message


def test_pending_migrations_defer_to_a_boot_of_their_own(django: Django) -> None:
    """With a migration pending the gate's boot does not request anything (the schema is
    not the new one yet); `smoke()` after migrate does, in one more boot."""
    db = django.release / "data" / "db.sqlite3"
    saved = db.with_suffix(".saved")
    db.rename(saved)
    try:
        found = django.inspect(gate=True, smoke=spec("/healthz", "/write"))
        assert found.pending and found.smoke is not None
        assert found.smoke.deferred == f"{len(found.pending)} migration(s) pending"
        found.smoke.verdict()  # nothing to judge yet
        django.migrate()
        report = django.smoke(spec("/healthz", "/write"))
        assert [r["status"] for r in report.results] == [200, 200]
        report.verdict()
        assert visits(django) == 0
    finally:
        db.unlink(missing_ok=True)
        saved.rename(db)


def test_a_hanging_smoke_request_fails_the_smoke_step(django: Django) -> None:
    """A smoke request that does not answer within django.timeout fails step "smoke" (not
    the gate), naming the path it hung on."""
    impatient = Django(DjangoConfig(timeout=10), django.release)
    with pytest.raises(StepFailed) as err:
        impatient.inspect(gate=True, smoke=spec("/healthz", "/slow"))
    assert err.value.step == "smoke" and err.value.timed_out
    assert err.value.message.startswith("GET /slow (Host 127.0.0.1:8000) did not answer "
                                        "within django.timeout (10s)")


def test_inspect_without_smoke_is_unchanged(django: Django) -> None:
    """Without a smoke spec the gate's boot sends no request."""
    assert django.inspect(gate=True).smoke is None


def test_manifest_storage_defers_until_collected(django: Django) -> None:
    """With a manifest static storage, the gate's boot defers the requests while the
    manifest is missing or this deploy's collectstatic will rewrite it; collected, they run."""
    settings = django.release / "mysite" / "settings.py"
    original = settings.read_text()
    settings.write_text(original + (
        "\nSTORAGES = {'default': {'BACKEND': 'django.core.files.storage.FileSystemStorage'},"
        " 'staticfiles': {'BACKEND':"
        " 'django.contrib.staticfiles.storage.ManifestStaticFilesStorage'}}\n"))
    try:
        found = django.inspect(gate=True, smoke=spec("/healthz", "/"))
        assert found.smoke is not None
        assert found.smoke.deferred == "the static files manifest is not collected yet"
        django.collectstatic()
        pending = SmokeSpec(spec().url, ("/",), SHA, static_pending=True)
        found = django.inspect(gate=True, smoke=pending)
        assert found.smoke is not None and found.smoke.deferred
        found = django.inspect(gate=True, smoke=spec("/healthz", "/"))
        assert found.smoke is not None and not found.smoke.deferred
        found.smoke.verdict()
    finally:
        settings.write_text(original)
        shutil.rmtree(django.release / "staticfiles", ignore_errors=True)
