"""Settings for the full-stack example: MySQL/MariaDB, Redis, Gunicorn on a unix socket.

Each release is ``<root>/releases/<id>/``; watcher links the shared ``.env`` (and ``media``)
into it. Every host-specific value comes from the real environment or, failing that, from
``.env``: the database password never lives in the repository. Values read from ``.env``
are not copied into ``os.environ``, so they are not inherited by every child process (and
do not show in ``/proc/<pid>/environ`` of the Gunicorn workers).

Keys (all optional except the password):

    DJANGO_SECRET_KEY          the Django secret key
    MYSITE_ALLOWED_HOSTS       comma-separated public names
    MYSITE_DB_NAME / _USER     database and user (default: mysite / mysite)
    MYSITE_DB_PASSWORD         the database user's password
    MYSITE_DB_SOCKET           MariaDB's socket (default /run/mysqld/mysqld.sock)
    MYSITE_REDIS_URL           default unix:///run/redis/redis-server.sock?db=0
    MYSITE_CELERY_BROKER_URL   default: the same Redis socket (redis+socket://), db 1
    MYSITE_STATIC_BUCKET_DIR   collect static files to "the bucket" instead of the release
    MYSITE_STATIC_URL          where the CDN serves them (default /static/)
"""

import os
from pathlib import Path

# resolve() follows the `current` symlink, so BASE_DIR is the release this code came from.
BASE_DIR = Path(__file__).resolve().parent.parent


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; blank lines, `#` comments and an `export ` prefix are allowed."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return values
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


_DOTENV = read_env_file(BASE_DIR / ".env")


def env(name: str, default: str = "") -> str:
    """The real environment first, then .env, then `default`."""
    value = os.environ.get(name)
    if value is None:
        value = _DOTENV.get(name)
    return default if value is None or not value.strip() else value.strip()


SECRET_KEY = env(
    "DJANGO_SECRET_KEY", "django-insecure-placeholder-set-DJANGO_SECRET_KEY-in-shared-env"
)
DEBUG = env("MYSITE_DEBUG").lower() in {"1", "true", "yes", "on"}

# Loopback stays allowed so that the health check through Nginx on 127.0.0.1 works.
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ALLOWED_HOSTS += [
    host.strip()
    for host in env("MYSITE_ALLOWED_HOSTS").split(",")
    if host.strip() and host.strip() not in ALLOWED_HOSTS
]
# Nginx terminates TLS and says so in X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "pages",
]

# No session or auth middleware: /healthz touches neither MySQL nor Redis.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mysite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    },
]

WSGI_APPLICATION = "mysite.wsgi.application"

# MariaDB (or MySQL) over its unix socket with mysqlclient: HOST stays empty and the socket
# is named in OPTIONS, so no TCP port needs to be open. Strict mode turns silent truncation
# into errors. MySQL DDL is not transactional: a migration that fails halfway leaves the
# schema partly changed (watcher's report lists the migrations that did run).
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": env("MYSITE_DB_NAME", "mysite"),
        "USER": env("MYSITE_DB_USER", "mysite"),
        "PASSWORD": env("MYSITE_DB_PASSWORD"),
        "HOST": "",
        "OPTIONS": {
            "unix_socket": env("MYSITE_DB_SOCKET", "/run/mysqld/mysqld.sock"),
            "charset": "utf8mb4",
            "init_command": "SET sql_mode='STRICT_TRANS_TABLES'",
            "isolation_level": "read committed",
        },
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }
}

# Redis over its unix socket (Debian's redis-server: /run/redis/redis-server.sock).
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env("MYSITE_REDIS_URL", "unix:///run/redis/redis-server.sock?db=0"),
        "KEY_PREFIX": "mysite",
    }
}

# Celery (mysite/celery.py): the same Redis as the broker, over its unix socket, in its own
# database. Tasks are acknowledged when they finish, so a worker killed mid-task (past
# Supervisord's stopwaitsecs) leaves the task queued for the next worker, not lost.
def _broker(url: str) -> str:
    """unix:///x.sock?db=0 (redis-py's form) -> redis+socket:///x.sock?virtual_host=1
    (kombu's); a redis:// URL is used as it is."""
    if url.startswith("unix://"):
        return f"redis+socket://{url[len('unix://'):].partition('?')[0]}?virtual_host=1"
    return url


CELERY_BROKER_URL = env(
    "MYSITE_CELERY_BROKER_URL",
    _broker(env("MYSITE_REDIS_URL", "unix:///run/redis/redis-server.sock?db=0")),
)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "heartbeat": {"task": "pages.tasks.heartbeat", "schedule": 60.0},
}
CELERY_TIMEZONE = "UTC"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Nginx serves /static/ from STATIC_ROOT inside the live release (through `current`), so
# switching `current` switches the static files with the code.
STATIC_URL = env("MYSITE_STATIC_URL", "/static/")
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_URL = "/media/"
MEDIA_ROOT = BASE_DIR / "media"  # shared/media, linked into every release

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Static files on a CDN: collectstatic writes to the bucket, nothing stays in the release.
# BucketStorage stands in for a remote backend such as django-storages' S3Storage.
if env("MYSITE_STATIC_BUCKET_DIR"):
    STORAGES["staticfiles"] = {
        "BACKEND": "mysite.storage.BucketStorage",
        "OPTIONS": {"location": env("MYSITE_STATIC_BUCKET_DIR"), "base_url": STATIC_URL},
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
