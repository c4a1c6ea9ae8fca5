"""`watcher init --from-checkout PATH`: what a Django project says about itself.

Read, never imported: the checkout's dependencies need not be installed where init runs, and
its settings may read secrets that are not there yet. Each finding is a `Site` field plus a
sentence for NEXT-STEPS.md; what cannot be read is left to the flags (or the prompts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watcher.errors import UsageError
from watcher.parts.runner import clean_env, run

_SETTINGS_DEFAULT = re.compile(r"""DJANGO_SETTINGS_MODULE["']\s*,\s*["']([\w.]+)["']""")
_LITERAL = re.compile(r"""["']([^"']*)["']""")
_REQ_NAMES = ("requirements.txt", "requirements/production.txt", "requirements/prod.txt",
              "requirements/base.txt", "requirements/common.txt")
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "staticfiles"}


@dataclass
class Found:
    """Site fields read from the checkout, and one note per finding."""

    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_checkout(path: Path) -> Found:
    if not path.is_dir():
        raise UsageError(f"--from-checkout {path}: not a directory")
    manage = path / "manage.py"
    if not manage.is_file():
        raise UsageError(f"--from-checkout {path}: no manage.py at its top: not a Django "
                         "project root (watcher deploys the repository's root)")
    found = Found()
    v, note = found.values, found.notes.append
    v["manage"] = "manage.py"
    settings = _first(_SETTINGS_DEFAULT, _read(manage))
    if not settings:
        raise UsageError(f"--from-checkout {path}: manage.py sets no DJANGO_SETTINGS_MODULE; "
                         "give --settings")
    v["settings"] = settings
    package = settings.split(".")[0]
    v["app"] = package
    text = _settings_text(path, settings)
    _wsgi(path, text, settings, found)
    note(f"manage.py sets DJANGO_SETTINGS_MODULE={settings}; the WSGI app is "
         f"{v['wsgi']}:application")
    _requirements(path, found)
    _static(text, found)
    _shared(text, found)
    _celery(path, package, found)
    hosts = re.search(r"""["'](\w*ALLOWED_HOSTS\w*)["']""", text)
    if hosts:
        v["hosts_setting"] = hosts[1]
    v["healthz"] = any("healthz" in _read(p) for p in _files(path, "urls.py"))
    note("a /healthz view answers the health check" if v["healthz"] else
         "no /healthz view found: the health check asks for / (see below)")
    gconf = path / "gunicorn.conf.py"
    v["gunicorn_conf"] = gconf.is_file()
    if gconf.is_file():
        named = re.search(r"""^wsgi_app\s*=\s*["']([\w.]+):""", _read(gconf), re.M)
        v["gunicorn_wsgi"] = named[1] if named else ""
        note("gunicorn.conf.py ships in the repository")
    remote = _git_origin(path)
    if remote:
        v["remote"] = remote
        note(f"git remote origin: {remote}")
    return found


def _wsgi(path: Path, text: str, settings: str, found: Found) -> None:
    named = re.search(r"""^WSGI_APPLICATION\s*=\s*["']([\w.]+)\.application["']""", text, re.M)
    module = named[1] if named else f"{settings.split('.')[0]}.wsgi"
    found.values["wsgi"] = module
    wsgi_file = path / (module.replace(".", "/") + ".py")
    default = _first(_SETTINGS_DEFAULT, _read(wsgi_file)) if wsgi_file.is_file() else ""
    found.values["wsgi_settings"] = default  # what the workers get without an environment


def _requirements(path: Path, found: Found) -> None:
    top = next((n for n in _REQ_NAMES if (path / n).is_file()), "")
    if not top:
        found.notes.append("no requirements file found: build.requirements says "
                           "requirements.txt; create it or change the key")
        return
    files: list[str] = []
    todo = [top]
    while todo:  # follow `-r other.txt`: every file that decides the venv is in its hash
        rel = todo.pop(0)
        if rel in files or not (path / rel).is_file():
            continue
        files.append(rel)
        for m in re.finditer(r"^\s*(?:-r|--requirement)\s*=?\s*(\S+)", _read(path / rel), re.M):
            todo.append(str((Path(rel).parent / m[1]).as_posix()).removeprefix("./"))
    found.values["requirements"] = tuple(files)
    found.notes.append(f"requirements: {', '.join(files)}")


def _static(text: str, found: Found) -> None:
    v = found.values
    url = _setting_literal(text, "STATIC_URL")
    if url.startswith("/"):
        v["static_url"] = url if url.endswith("/") else url + "/"
    line = _setting_line(text, "STATIC_ROOT")
    literals = [m for m in _LITERAL.findall(line) if m]
    if not line:
        found.notes.append("STATIC_ROOT is not set: collectstatic needs it (assumed "
                           "staticfiles/ inside the release)")
    elif literals and literals[-1].startswith("/") and "BASE_DIR" not in line:
        v["static_root"] = literals[-1].rstrip("/")
        found.notes.append(f"STATIC_ROOT is outside the release ({v['static_root']}): "
                           "collectstatic updates it in place before each switch")
    else:
        v["static_root"] = "/".join(x.strip("/") for x in literals) or "staticfiles"
        found.notes.append(f"STATIC_ROOT is inside the release ({v['static_root']}/): "
                           "each release has its own, switched with the code")


def _shared(text: str, found: Found) -> None:
    v, shared = found.values, []
    if re.search(r"""["']\.env["']|load_dotenv|read_env""", text):
        v["dotenv"] = True
        shared.append(".env")
        found.notes.append("settings read .env: linked from shared/ (secrets stay out of git)")
    else:
        v["dotenv"] = False
    media = _setting_line(text, "MEDIA_ROOT")
    if media and "BASE_DIR" in media:
        name = "/".join(x.strip("/") for x in _LITERAL.findall(media) if x) or "media"
        v["media"] = name
        shared.append(name)
        url = _setting_literal(text, "MEDIA_URL")
        if url.startswith("/"):
            v["media_url"] = url if url.endswith("/") else url + "/"
        found.notes.append(f"MEDIA_ROOT {name}/ is shared by every release")
    db = re.search(r"""["']NAME["']\s*:\s*BASE_DIR\s*/\s*["']([^"'/]+)["']\s*/""", text)
    if db and "sqlite3" in text:
        shared.append(db[1])
        found.notes.append(f"the sqlite database lives in {db[1]}/: shared by every release")
    v["shared"] = tuple(shared)


def _celery(path: Path, package: str, found: Found) -> None:
    reqs = " ".join(_read(path / r) for r in found.values.get("requirements", ()))
    module = path / package / "celery.py"
    if not (module.is_file() or re.search(r"^\s*celery\b", reqs, re.M | re.I)):
        return
    found.values["celery"] = package
    sources = " ".join(_read(p) for p in sorted((path / package).rglob("*.py"))[:200])
    beat = bool(re.search(r"beat_schedule|CELERY_BEAT_SCHEDULE|django_celery_beat", sources))
    found.values["celery_beat"] = beat
    found.notes.append(f"the app uses Celery (-A {package}): a worker program"
                       + (" and beat" if beat else "") + ", restarted after each deploy")


def _settings_text(path: Path, settings: str) -> str:
    base = path / settings.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            text = _read(candidate)
            if candidate.name == "__init__.py":  # a settings package: read its modules too
                text += "".join(_read(p) for p in sorted(base.glob("*.py")))
            return text
    return ""


def _setting_line(text: str, name: str) -> str:
    m = re.search(rf"^{name}\s*=\s*(.+)$", text, re.M)
    return m[1] if m else ""


def _setting_literal(text: str, name: str) -> str:
    literals = _LITERAL.findall(_setting_line(text, name))
    return next((x for x in literals if x.startswith(("/", "http"))), "")


def _first(pattern: re.Pattern[str], text: str) -> str:
    m = pattern.search(text)
    return m[1] if m else ""


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _files(root: Path, name: str, depth: int = 3) -> list[Path]:
    out: list[Path] = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.is_file() and entry.name == name:
            out.append(entry)
        elif entry.is_dir() and depth > 0 and entry.name not in _SKIP_DIRS:
            out += _files(entry, name, depth - 1)
    return out


def _git_origin(path: Path) -> str:
    """origin's URL when PATH is the top of its own git work tree (not a subdirectory)."""
    top = run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], step="init",
              timeout=10, env=clean_env(), check=False)
    if not top.ok or Path(top.output.strip()).resolve() != path.resolve():
        return ""
    url = run(["git", "-C", str(path), "remote", "get-url", "origin"], step="init",
              timeout=10, env=clean_env(), check=False)
    return url.output.strip() if url.ok else ""
