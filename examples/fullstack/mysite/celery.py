"""The Celery app: background tasks run by ``celery -A mysite worker`` and scheduled by
``celery -A mysite beat``, both under Supervisord (supervisor/conf.d-fullstack/celery.conf),
with the site's Redis as the broker.

Workers import the code once, when they start: a deploy must restart them (watcher's
``supervisor.workers``) after the web is healthy and the migrations ran, with a TERM (a warm
shutdown: tasks already running finish on the old code) and never a HUP.

Each worker notes when it became ready and which signal ended it in the Redis list
``mysite:worker-events`` (the operator's, and the tests', view of restarts).
"""

import json
import os
import signal
import time

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutting_down

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

app = Celery("mysite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

WORKER_EVENTS = "mysite:worker-events"


def _note(event: str, **fields: object) -> None:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    try:
        record = {"event": event, "pid": os.getpid(), "at": time.time(), **fields}
        client.rpush(WORKER_EVENTS, json.dumps(record))
    finally:
        client.close()


@worker_process_init.connect
def _pool_process_ignores_term(**_: object) -> None:
    """Supervisord's stopasgroup sends TERM to the whole process group, pool processes
    included, and a Celery pool process dies of TERM mid-task (WorkerLostError). Ignored
    here, TERM is acted on by the main process alone: a warm shutdown that waits for the
    running tasks, then ends the pool. Past stopwaitsecs, killasgroup's KILL still ends all."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@worker_ready.connect
def _ready(**_: object) -> None:
    _note("ready")


@worker_shutting_down.connect
def _shutting_down(sig: str = "", how: str = "", **_: object) -> None:
    _note("shutdown", sig=str(sig), how=str(how))
