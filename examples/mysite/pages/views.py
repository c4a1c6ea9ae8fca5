from functools import cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from pages.models import Visit


@cache
def revision() -> str:
    """The commit this release was built from: REVISION, written by watcher, or "unknown".

    Read once per worker from the release the code was imported from (BASE_DIR is a resolved
    path), so after a reload it names the code actually serving, not what `current` says.
    """
    try:
        text = (settings.BASE_DIR / "REVISION").read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"
    return text or "unknown"


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for watcher and load balancers; never touches the database."""
    return HttpResponse(f"ok {revision()}\n", content_type="text/plain; charset=utf-8")


@never_cache
def index(request: HttpRequest) -> HttpResponse:
    """Record a visit and show the revision being served."""
    Visit.objects.create()
    return render(
        request,
        "pages/index.html",
        {"revision": revision(), "visits": Visit.objects.count()},
    )


@never_cache
@require_GET
def visits(request: HttpRequest) -> HttpResponse:
    """How many visits the shared database holds, as plain text."""
    return HttpResponse(f"{Visit.objects.count()}\n", content_type="text/plain; charset=utf-8")


@csrf_exempt
@require_POST
def write(request: HttpRequest) -> HttpResponse:
    """Insert one row and answer its id: the steady write load of the migration tests."""
    visit = Visit.objects.create()
    return HttpResponse(f"{visit.pk}\n", content_type="text/plain; charset=utf-8")
