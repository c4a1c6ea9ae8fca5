"""The templates `watcher init` writes from, and the tiny language they are written in.

A template is the file an operator installs, with `{{name}}` where a value goes and whole
lines `{% if name %}`, `{% if not name %}`, `{% else %}`, `{% endif %}` around the parts that
depend on the site. Nothing else is special, so Nginx's `$host` and Supervisord's `%(here)s`
need no escaping. Rendering is pure: a name the context lacks is an error, never an empty
string, so a template and its values cannot silently fall apart.

The templates live in `watcher/init/templates/` and ship in the wheel (package data). The
checked-in `supervisor/`, `systemd/`, `examples/nginx/` and `examples/watcher.toml` are
rendered from the same files (`make shipped`; a test fails when they are stale).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources

Value = str | bool

_NAME = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")
_DIRECTIVE = re.compile(r"^\s*\{%\s*(if not|if|else|endif)\s*([a-z0-9_]*)\s*%\}\s*$")


class TemplateError(ValueError):
    """A template is malformed or names a value the context does not have."""


def template_text(name: str) -> str:
    """A shipped template's text (from the installed package, wheel or checkout)."""
    try:
        return resources.files("watcher.init").joinpath("templates", name).read_text("utf-8")
    except FileNotFoundError:
        raise TemplateError(f"no template named {name!r} in watcher/init/templates") from None


def render(text: str, context: Mapping[str, Value], name: str = "template") -> str:
    """`text` with its conditions decided and its `{{names}}` filled from `context`."""
    out: list[str] = []
    # Each open `if`: (this branch is taken, the enclosing block was being written).
    stack: list[tuple[bool, bool]] = []
    writing = True
    for lineno, line in enumerate(text.splitlines(keepends=True), 1):
        where = f"{name}:{lineno}"
        match = _DIRECTIVE.match(line)
        if match:
            word, key = match.groups()
            if word in ("if", "if not"):
                value = _lookup(context, key, where)
                taken = bool(value) != (word == "if not")
                stack.append((taken, writing))
                writing = writing and taken
            elif not stack:
                raise TemplateError(f"{where}: {word} without if")
            elif word == "else":
                taken, outer = stack[-1]
                stack[-1] = (not taken, outer)
                writing = outer and not taken
            else:
                _, writing = stack.pop()
            continue
        if "{%" in line:
            raise TemplateError(f"{where}: malformed directive {line.strip()!r}")
        # split() alternates text and names. Names in untaken branches are looked up too, so
        # a typo anywhere in a template fails every render, not only the one that shows it.
        pieces = _NAME.split(line)
        for i in range(1, len(pieces), 2):
            pieces[i] = _text(_lookup(context, pieces[i], where))
        if writing:
            out.append("".join(pieces))
    if stack:
        raise TemplateError(f"{name}: {len(stack)} if without endif")
    return "".join(out)


def render_template(name: str, context: Mapping[str, Value]) -> str:
    return render(template_text(name), context, name)


def _lookup(context: Mapping[str, Value], key: str, where: str) -> Value:
    if key not in context:
        raise TemplateError(f"{where}: no value for {key!r}")
    return context[key]


def _text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
