"""Settings for the example site that watcher deploys.

Each release is a directory ``<root>/releases/<id>/`` holding this project. Watcher links
the shared paths ``.env`` and ``data`` into it, so both survive a new release. Importing
this module creates nothing on disk: ``data/`` must already exist (in production it is the
shared directory; locally, ``mkdir data``) before ``manage.py migrate``.
"""

import os
from pathlib import Path

# resolve() follows the `current` symlink, so BASE_DIR is the release this code came from,
# not whatever `current` points at later: REVISION read from here names the code running.
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


# The real environment wins over .env: the file only fills in what is unset.
for _key, _value in read_env_file(BASE_DIR / ".env").items():
    os.environ.setdefault(_key, _value)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-placeholder-set-DJANGO_SECRET_KEY-in-shared-env"
)

DEBUG = env_bool("MYSITE_DEBUG", default=False)

# Loopback is always allowed so that health checks on 127.0.0.1 keep working; the
# comma-separated MYSITE_ALLOWED_HOSTS adds the public names.
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ALLOWED_HOSTS += [
    host.strip()
    for host in os.environ.get("MYSITE_ALLOWED_HOSTS", "").split(",")
    if host.strip() and host.strip() not in ALLOWED_HOSTS
]

INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "pages",
]

# No session or auth middleware: nothing on the request path touches the database unless a
# view does, so /healthz answers even when the database is locked or missing.
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

# data/ is a symlink to <root>/shared/data in production, so the database outlives releases.
# Several Gunicorn workers write to it: wait for the lock instead of failing at once, take
# the write lock when a transaction starts, and use WAL so readers do not block the writer.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "data" / "db.sqlite3",
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Nginx serves /static/ from STATIC_ROOT; it lies inside the release, so every release has
# its own collected files and switching `current` switches them too.
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# Django's default logging sends errors to the console only when DEBUG is on; send them to
# stderr always, so that a 500 leaves its traceback in the Supervisord log.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
