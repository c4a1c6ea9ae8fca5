# mypy: disable-error-code="import-untyped"
"""Smoke requests (DESIGN §2 step 9a), run inside the new release by its own interpreter.

Read and exec'd by the gate's Django boot (`_INSPECT` in parts/django_steps.py) or by a boot
of its own after the migrations; so it imports Django and the site, never watcher, and
returns plain JSON-able data that watcher judges and scrubs.

The health URL's path and each smoke path are requested through Django's test `Client` with
the health URL's Host header (ALLOWED_HOSTS applies, as in production), one after the other,
inside one transaction per database that is rolled back at the end (where the database
supports transactions), each request in a savepoint of its own so that one failing request
does not poison the next. Mail goes to Django's in-memory backend.
"""

from __future__ import annotations

import time
import traceback
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

STARTED = "WATCHER-SMOKE-GET "  # printed (flushed) before each request: names a hang
TRACE_LINES = 12  # the last lines of a traceback, which name the failing code
TRACE_CHARS = 1500
BODY_CHARS = 300


def in_gate(spec: dict[str, Any], pending: list[str]) -> dict[str, Any]:
    """The smoke requests in the gate's boot, or why they must wait for a boot of their own
    after migrate and collectstatic: the schema is not the one the release will serve on,
    or a manifest static storage has no manifest yet (every `{% static %}` would fail)."""
    if pending:
        return {"deferred": f"{len(pending)} migration(s) pending"}
    if _manifest_stale(bool(spec.get("static_pending"))):
        return {"deferred": "the static files manifest is not collected yet"}
    return run(spec)


def _manifest_stale(static_pending: bool) -> bool:
    """A manifest storage whose manifest is missing, or about to be rewritten by this
    deploy's collectstatic (`static_pending`): `{% static %}` would answer from the wrong
    manifest, or raise."""
    from django.apps import apps

    if not apps.is_installed("django.contrib.staticfiles"):
        return False
    from django.contrib.staticfiles.storage import staticfiles_storage

    name = getattr(staticfiles_storage, "manifest_name", None)
    if not name:
        return False
    if static_pending:
        return True
    store = getattr(staticfiles_storage, "manifest_storage", staticfiles_storage)
    try:
        return not store.exists(name)
    except Exception:  # remote storage unreachable: the smoke request will say so
        return False


def target(url: str) -> tuple[str, str, bool]:
    """(path with query, Host header, https) of the health URL."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal, as it appears in a Host header
    if parts.port:
        host += f":{parts.port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return path, host, parts.scheme == "https"


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Request each path; one result per path, and `error` for what stops all of them.
    `ms`, `cpu_ms`: the whole cost in this process (wall clock, CPU), imports included."""
    began, cpu = time.monotonic(), time.process_time()
    report = _run(spec)
    report["ms"] = round((time.monotonic() - began) * 1000, 1)
    report["cpu_ms"] = round((time.process_time() - cpu) * 1000, 1)
    return report


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    from django.conf import settings
    from django.core.exceptions import DisallowedHost
    from django.test import Client, RequestFactory

    health_path, host, secure = target(spec["url"])
    expect = spec.get("expect") or ""
    paths = [health_path] + [p for p in spec.get("paths", []) if p != health_path]
    report: dict[str, Any] = {"host": host, "results": [], "error": "",
                              "rolled_back": [], "not_rolled_back": []}
    try:
        RequestFactory().get(health_path, HTTP_HOST=host, secure=secure).get_host()
    except DisallowedHost:
        report["error"] = (
            f"the health URL's host {host!r} is not in ALLOWED_HOSTS "
            f"({list(settings.ALLOWED_HOSTS)!r}): Django answers 400 to every request "
            f"with that Host header; add it to ALLOWED_HOSTS in the settings"
        )
        return report
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    client = Client(HTTP_HOST=host, raise_request_exception=True)
    with ExitStack() as outer:
        protected = _open_transactions(outer, report)
        for path in paths:
            report["results"].append(
                _request(client, path, secure, expect if path == health_path else "",
                         protected))
        _roll_back(protected)
    return report


def _open_transactions(stack: ExitStack, report: dict[str, Any]) -> list[str]:
    from django.db import connections, transaction

    protected = []
    for alias in connections:
        try:
            if not connections[alias].features.supports_transactions:
                report["not_rolled_back"].append(alias)
                continue
            stack.enter_context(transaction.atomic(using=alias))
        except Exception as exc:  # that database is unreachable: its requests will say so
            report["not_rolled_back"].append(f"{alias} ({type(exc).__name__})")
            continue
        protected.append(alias)
    report["rolled_back"] = protected
    return protected


def _roll_back(aliases: list[str]) -> None:
    from django.db import transaction

    for alias in aliases:
        transaction.set_rollback(True, using=alias)


def _request(client: Any, path: str, secure: bool, expect: str,
             aliases: list[str]) -> dict[str, Any]:
    from django.db import transaction

    result: dict[str, Any] = {"path": path, "status": None, "ms": 0.0, "problem": "",
                              "detail": ""}
    print(STARTED + path, flush=True)
    started = time.monotonic()
    try:
        with ExitStack() as savepoints:
            for alias in aliases:
                savepoints.enter_context(transaction.atomic(using=alias))
            response = client.get(path, secure=secure, follow=False)
            body = _body(response)
    except Exception as exc:
        result["problem"] = f"raised {type(exc).__name__}: {str(exc)[:200]}"
        lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        result["detail"] = "\n".join(lines.splitlines()[-TRACE_LINES:])[-TRACE_CHARS:]
    else:
        status = result["status"] = response.status_code
        if status >= 500:
            result["problem"] = f"answered {status}"
            result["detail"] = body[:BODY_CHARS]
        elif expect and expect not in body:
            result["problem"] = f"answered {status} without the new revision {expect[:12]}"
            result["detail"] = body[:BODY_CHARS]
    result["ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


def _body(response: Any) -> str:
    if getattr(response, "streaming", False):
        data = b"".join(response.streaming_content)
    else:
        data = response.content
    return bytes(data[:65536]).decode("utf-8", errors="replace")
