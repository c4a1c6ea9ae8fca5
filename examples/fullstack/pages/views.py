from functools import cache

from django.conf import settings
from django.core.cache import cache as redis_cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from pages.models import Visit

COUNTER = "pages:visits"


@cache
def revision() -> str:
    """The commit this release was built from: REVISION, written by watcher, or "unknown"."""
    try:
        text = (settings.BASE_DIR / "REVISION").read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"
    return text or "unknown"


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for watcher and load balancers; touches neither MySQL nor Redis."""
    return HttpResponse(f"ok {revision()}\n", content_type="text/plain; charset=utf-8")


def count_in_redis() -> int:
    """Add one to the Redis counter; create it on first use (incr fails on a missing key)."""
    if redis_cache.add(COUNTER, 1, timeout=None):
        return 1
    return int(redis_cache.incr(COUNTER))


@never_cache
def index(request: HttpRequest) -> HttpResponse:
    """Record a visit in MySQL and in Redis, and show both counts and the revision."""
    Visit.objects.create()
    return render(
        request,
        "pages/index.html",
        {"revision": revision(), "visits": Visit.objects.count(), "hits": count_in_redis()},
    )


@never_cache
@require_GET
def visits(request: HttpRequest) -> HttpResponse:
    """Both counts as plain text: `mysql=N redis=M`."""
    hits = redis_cache.get(COUNTER, 0)
    return HttpResponse(
        f"mysql={Visit.objects.count()} redis={hits}\n", content_type="text/plain; charset=utf-8"
    )


@csrf_exempt
@require_POST
def write(request: HttpRequest) -> HttpResponse:
    """Insert one row and answer its id: the steady write load of the migration tests."""
    visit = Visit.objects.create()
    return HttpResponse(f"{visit.pk}\n", content_type="text/plain; charset=utf-8")
