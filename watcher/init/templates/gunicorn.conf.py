"""Gunicorn settings for {{app}}, shipped inside each release (commit this file at the root
of the repository: the Supervisord program reads it through `current`).

Supervisord starts Gunicorn with ``--chdir {{root}}/current`` and
``-c {{root}}/current/gunicorn.conf.py``. On SIGHUP Gunicorn re-reads this file through
the `current` symlink, chdirs there again and forks fresh workers that import the new
release's code. So the app is never preloaded in the master, and there is no ``chdir`` here.
"""

import os

wsgi_app = "{{wsgi}}:application"

bind = os.environ.get("GUNICORN_BIND", "{{bind}}")
# A unix socket is guarded by its directory (0750, Nginx's group): rw for who gets in.
umask = int(os.environ.get("GUNICORN_UMASK", "0"), 8)
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))

# A worker silent for longer than this is killed and replaced.
timeout = 30
# After a HUP or TERM, old workers get this long to finish the requests they hold.
# Supervisord's stopwaitsecs (30) must stay above it.
graceful_timeout = 20

errorlog = "-"
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
proc_name = os.environ.get("GUNICORN_PROC_NAME", "{{app}}")

# Django's own modules (library code, never the app) are imported once here in the master,
# before any worker forks: a worker added by a rolling reload (TTIN) then imports only the
# release's code, and serves in about 0.1 s instead of 0.3 s; the workers share those pages.
# They change only with the venv, and watcher starts a new master whenever the venv changes
# (`supervisor.reload = "auto"`: a stop + start or a blue/green swap). With a forced
# `reload = "hup"` or `"rolling"` a new venv would keep this Django: delete the block then.
# Nothing here reads the settings: the app's modules are never imported in the master.
DJANGO_PRELOAD = (
    "django.core.handlers.wsgi", "django.core.wsgi", "django.db.models", "django.urls",
    "django.middleware.security", "django.middleware.common", "django.middleware.csrf",
    "django.middleware.clickjacking", "django.template.backends.django",
    "django.db.backends.sqlite3.base", "django.db.backends.mysql.base",
    "django.db.backends.postgresql.base",
)


def _preload_django() -> None:
    import contextlib
    import importlib

    for name in DJANGO_PRELOAD:
        # A database driver that is not installed: the workers say so if the app needs it.
        with contextlib.suppress(Exception):
            importlib.import_module(name)


_preload_django()
