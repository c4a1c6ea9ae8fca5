"""`watcher init [DIR]`: gather a site's values (flags, checkout, prompts), write its files,
then check them the way `watcher check` would, as far as that goes before anything exists.

Each value comes from its flag, else from `--from-checkout`, else (on a TTY) from a
question, else from its default; a required value with none of those is a usage error that
names its flag (exit 2). Nothing is written when any target exists, unless `--force`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watcher.errors import UsageError

# (field, flag, question); default: a function of the values gathered so far (None: required)
_ASKED: list[tuple[str, str, str, Callable[[dict[str, Any]], str] | None]] = [
    ("app", "--app", "App name (Supervisord program, Nginx site)", None),
    ("root", "--root", "App root (releases, venvs, shared)", lambda v: f"/srv/{v['app']}"),
    ("remote", "--remote", "Git remote to deploy from", None),
    ("branch", "--branch", "Branch to deploy", lambda v: "main"),
    ("settings", "--settings", "Django settings module", lambda v: f"{v['app']}.settings"),
    ("wsgi", "--wsgi", "WSGI module", lambda v: f"{v['settings'].split('.')[0]}.wsgi"),
    ("server_names", "--server-name", "Public host names (space-separated)",
     lambda v: "example.com www.example.com"),
]


BLUEGREEN_QUESTION = ("Blue/green pair, so a requirements change drops no request "
                      "(two programs, 8001/8002), y or n")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "init", help="write a starting set of files for one site",
        description="Write watcher.toml, Supervisord programs, an Nginx site, systemd units "
        "and NEXT-STEPS.md into DIR, then check them. Never overwrites without --force.")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR", help="output (default: .)")
    p.add_argument("--from-checkout", metavar="PATH", type=Path,
                   help="a checkout of the Django project: read its settings, WSGI module, "
                   "requirements, STATIC_ROOT, MEDIA_ROOT, .env and Celery use")
    p.add_argument("--app", metavar="NAME", help="app name (default: the settings package)")
    p.add_argument("--root", metavar="PATH", help="app root (default: /srv/NAME)")
    p.add_argument("--remote", metavar="URL", help="git remote (default: the checkout's origin)")
    p.add_argument("--branch", metavar="B", help="branch to deploy (default: main)")
    p.add_argument("--settings", metavar="MODULE", help="DJANGO_SETTINGS_MODULE")
    p.add_argument("--wsgi", metavar="MODULE", help="WSGI module (default: PACKAGE.wsgi)")
    p.add_argument("--server-name", dest="server_names", metavar="NAMES",
                   help="Nginx server_name, space-separated (default: example.com ...)")
    p.add_argument("--bluegreen", action="store_true", default=None,
                   help="a blue/green pair on 127.0.0.1:8001/8002 instead of one program "
                   "(asked on a terminal; off otherwise)")
    p.add_argument("--port", type=int, default=0, metavar="N",
                   help="one program on 127.0.0.1:N instead of a unix socket")
    p.add_argument("--user", default="deploy", metavar="USER",
                   help="the user that runs watcher (default: deploy)")
    p.add_argument("--app-user", default="", metavar="USER",
                   help="the user that runs the app's Gunicorn and Celery, apart from watcher's "
                   "(default: the app name; the same as --user for one user)")
    p.add_argument("--python", default="/usr/bin/python3", metavar="PATH",
                   help="interpreter for the app's venvs (default: /usr/bin/python3)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")


def main(args: argparse.Namespace) -> int:
    from watcher.init.detect import Found, read_checkout
    from watcher.init.site import Site, files

    found = read_checkout(args.from_checkout) if args.from_checkout else Found()
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    values = _gather(args, found.values, interactive=interactive)
    if args.bluegreen is None:  # not given: asked on a terminal unless --port chose one program
        args.bluegreen = interactive and not args.port and _yes(BLUEGREEN_QUESTION)
    if args.bluegreen and args.port:
        raise UsageError("--bluegreen and --port exclude each other (the pair uses 8001/8002)")
    fields = {f.name for f in dataclasses.fields(Site)}
    merged = {k: v for k, v in {**found.values, **values}.items() if k in fields}
    package = values["settings"].split(".")[0]
    # The workers get DJANGO_SETTINGS_MODULE from wsgi.py unless the program sets it; and
    # Gunicorn imports gunicorn.conf.py's wsgi_app unless the command line names another.
    merged["settings_env"] = values["settings"] != found.values.get(
        "wsgi_settings", f"{package}.settings")
    merged["wsgi_arg"] = (args.wsgi is not None or "gunicorn_wsgi" in found.values) and (
        values["wsgi"] != found.values.get("gunicorn_wsgi"))
    site = Site(**merged, bluegreen=args.bluegreen, port=args.port, user=args.user,
                app_user=args.app_user or values["app"], python=args.python,
                notes=tuple(found.notes))
    outdir = Path(args.dir).absolute()
    written = files(site, str(outdir))
    existing = sorted(rel for rel in written if (outdir / rel).exists())
    if existing and not args.force:
        raise UsageError(f"{outdir}: {', '.join(existing)} already exist; nothing written "
                         "(--force overwrites)")
    for rel, text in written.items():
        _write(outdir / rel, text, 0o640 if rel == "watcher.toml" else 0o644)
    print(f"wrote {len(written)} files into {outdir}:")
    for rel in sorted(written):
        print(f"  {rel}")
    print()
    from watcher.init.verify import validate

    return validate(outdir, site)


def _gather(args: argparse.Namespace, found: dict[str, Any], interactive: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, flag, question, default in _ASKED:
        given = getattr(args, name)
        if given is None and name in found:
            given = " ".join(found[name]) if name == "server_names" else found[name]
        if given is None:
            fallback = default(values) if default else None
            if interactive:
                given = _ask(question, fallback)
            elif fallback is None:
                raise UsageError(f"init needs {flag} (not on a terminal, so it cannot ask)")
            else:
                given = fallback
        values[name] = given
    values["server_names"] = tuple(values["server_names"].split())
    _check(values)
    return values


def _ask(question: str, default: str | None) -> str:
    while True:
        answer = input(f"{question}{f' [{default}]' if default else ''}: ").strip()
        if answer or default:
            return answer or str(default)


def _yes(question: str) -> bool:
    while (answer := _ask(question, "n").lower()) not in ("y", "yes", "n", "no"):
        print("  y or n, please")
    return answer.startswith("y")


def _check(v: dict[str, Any]) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", v["app"]):
        raise UsageError(f"--app {v['app']!r}: letters, digits, - and _ only (it names "
                         "Supervisord programs and files)")
    if not v["root"].startswith("/"):
        raise UsageError(f"--root {v['root']!r}: must be an absolute path")
    for name, flag in (("settings", "--settings"), ("wsgi", "--wsgi")):
        if not re.fullmatch(r"[A-Za-z_][\w.]*", v[name]):
            raise UsageError(f"{flag} {v[name]!r}: not a Python module path")
    if not v["server_names"]:
        raise UsageError("--server-name: at least one name")
    for name in v["server_names"]:
        if not re.fullmatch(r"[A-Za-z0-9*_.-]+", name):
            raise UsageError(f"--server-name {name!r}: not a host name")


def _write(path: Path, text: str, mode: int) -> None:
    """tmp + rename: a file is either the old one or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.init-tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    os.replace(tmp, path)
