"""Background tasks, run by the Celery worker (never by the web processes)."""

import json
import os
import time

import redis
from celery import shared_task
from django.conf import settings

# Which code ran a task: a deploy that changes this shows whether workers run the new code.
TASK_CODE = "v1"
RESULTS = "mysite:task-results"


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])


@shared_task
def record(key: str, seconds: float = 0.0) -> str:
    """Note that the task started, work for `seconds`, then note the code that ran it."""
    client = _redis()
    try:
        started = {"key": key, "event": "started", "pid": os.getpid(), "at": time.time()}
        client.rpush(RESULTS, json.dumps(started))
        time.sleep(seconds)
        done = {"key": key, "event": "done", "code": TASK_CODE, "pid": os.getpid(),
                "at": time.time()}
        client.rpush(RESULTS, json.dumps(done))
    finally:
        client.close()
    return TASK_CODE


@shared_task
def heartbeat() -> None:
    """Scheduled by beat every minute: the time of the last run, for monitoring."""
    client = _redis()
    try:
        client.set("mysite:heartbeat", str(time.time()))
    finally:
        client.close()
