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
