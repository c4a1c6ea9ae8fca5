"""Pure converters for config values; each raises ConfigError naming where the value came from."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

from watcher.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class EnvValue(str):
    """A value from a WATCHER_* variable: still text, converted by the key's type."""


def from_env(value: str) -> EnvValue:
    return EnvValue(value)


def parse_duration(value: object) -> float:
    """`"90s"`, `"5m"`, `"1h"`, `"250ms"` or a number of seconds -> seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        if not math.isfinite(value):  # TOML has nan and inf; a sleep(nan) would crash later
            raise ValueError(f"not a duration: {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"not a duration: {value!r} (use e.g. \"90s\", \"5m\", \"1h\" or seconds)")


def convert(value: Any, hint: Any, where: str, duration: bool = False) -> Any:
    """Convert one raw value to the field's type."""
    try:
        return _convert(value, hint, duration)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _convert(value: Any, hint: Any, duration: bool) -> Any:
    if duration:
        return parse_duration(value)
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is not None and get_origin(hint) is not tuple and args:
        hint = args[0]  # Optional[X]
    if hint is str:
        return _expect(value, str, "a string")
    if hint is Path:
        return Path(_expect(value, str, "a path string"))
    if hint is bool:
        if isinstance(value, EnvValue):
            low = value.strip().lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError(f"expected true or false, got {value!r}")
        return _expect(value, bool, "true or false")
    if hint is int:
        if isinstance(value, EnvValue):
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {type(value).__name__}")
        return value
    if hint is float:
        if isinstance(value, EnvValue):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {type(value).__name__}")
        return float(value)
    if get_origin(hint) is tuple:
        inner = get_args(hint)[0]
        if get_origin(inner) is tuple:
            return _commands(value)
        return _strings(value)
    raise TypeError(f"unsupported type {hint!r}")  # pragma: no cover - a programming error


def _expect(value: Any, typ: type, what: str) -> Any:
    if isinstance(value, bool) and typ is not bool:
        raise TypeError(f"expected {what}, got a boolean")
    if not isinstance(value, typ):
        raise TypeError(f"expected {what}, got {type(value).__name__}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, EnvValue):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:
            return tuple(part.strip() for part in text.split(",") if part.strip())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


def _commands(value: Any) -> tuple[tuple[str, ...], ...]:
    """Hook commands: each an argv list, or a string split like a shell would (no shell runs)."""
    if isinstance(value, EnvValue):
        value = json.loads(value) if value.strip().startswith("[") else [str(value)]
    if not isinstance(value, list):
        raise TypeError("expected a list of commands (argv lists or strings)")
    out: list[tuple[str, ...]] = []
    for item in value:
        if isinstance(item, str):
            argv = shlex.split(item)
        elif isinstance(item, list) and all(isinstance(a, str) for a in item):
            argv = list(item)
        else:
            raise TypeError("each command must be a string or a list of strings")
        if not argv:
            raise ValueError("a command must not be empty")
        out.append(tuple(argv))
    return tuple(out)


# `uv pip install` options that `build.pip_args` may pass through (uv accepts pip's spelling
# of each; checked against uv 0.4-0.13). Anything else is a config error at load, naming the
# argument, rather than a failed deploy later.
UV_FLAGS = frozenset({
    "--no-index", "--no-deps", "--pre", "--require-hashes", "--no-build-isolation",
    "--no-build", "-U", "--upgrade", "--force-reinstall", "--reinstall", "--compile",
    "--compile-bytecode", "--no-compile", "--no-cache-dir", "--no-cache", "-q", "--quiet",
    "--disable-pip-version-check", "--isolated", "--no-color", "--break-system-packages",
})
UV_VALUED = frozenset({
    "-r", "--requirement", "--requirements", "-c", "--constraint", "--constraints",
    "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--only-binary",
    "--no-binary", "--trusted-host", "--cert", "-C", "--config-settings", "--config-setting",
    "--keyring-provider",
})


def unsupported_uv_args(args: Sequence[str]) -> list[str]:
    """The entries of pip_args that `uv pip install` would reject (pure)."""
    bad: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            continue  # a requirement specifier: uv takes those as pip does
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
        if name in UV_FLAGS and name == arg:
            continue
        if name in UV_VALUED:
            if name == arg:
                i += 1  # `--find-links DIR`: the next entry is the value
            continue
        bad.append(arg)
    return bad
