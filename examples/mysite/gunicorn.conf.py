"""Gunicorn settings for the example site, shipped inside each release.

Supervisord starts Gunicorn with ``--chdir /srv/mysite/current`` and
``-c /srv/mysite/current/gunicorn.conf.py``. On SIGHUP Gunicorn re-reads this file through
the `current` symlink, chdirs there again and forks fresh workers that import the new
release's code. Two things would break that, so neither is done here:

* the app is not loaded in the master (no preloading): a preloaded app is inherited by
  every new worker, and a HUP would keep serving the old code;
* no ``chdir`` here: the command line names the symlink, never a resolved release path.

Every setting can be changed per host through the environment (``.env`` is not read here:
put these in the Supervisord program's ``environment=``).
"""

import os

wsgi_app = "mysite.wsgi:application"

# Loopback only: Nginx is the one talking to the world.
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))

# A worker silent for longer than this is killed and replaced.
timeout = 30
# After a HUP or TERM, old workers get this long to finish the requests they hold.
# Supervisord's stopwaitsecs must stay above it, or it SIGKILLs requests in flight.
graceful_timeout = 20

# Errors to stderr (Supervisord's log); the access log is off unless GUNICORN_ACCESS_LOG is
# set ("-" for stdout), since Nginx already keeps one.
errorlog = "-"
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")

proc_name = os.environ.get("GUNICORN_PROC_NAME", "mysite")

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
