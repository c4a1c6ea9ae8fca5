"""Reading the config: one TOML file plus `WATCHER_<SECTION>_<KEY>` overrides into a `Config`.

Each section's table is converted key by key into its dataclass of `config.SECTIONS` (pure
converters in `config_values`), then `config_checks.check` runs the rules between keys.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

from watcher import config_rules as rules
from watcher.config import CHOICES, SECTIONS, Config
from watcher.config_checks import check
from watcher.config_values import EnvValue, convert, from_env
from watcher.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_PATH = "/etc/watcher/watcher.toml"

__all__ = ["DEFAULT_PATH", "build", "config_path", "load"]


def config_path(cli_path: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """`--config PATH`, else `$WATCHER_CONFIG`, else /etc/watcher/watcher.toml."""
    env = os.environ if environ is None else environ
    return Path(cli_path or env.get("WATCHER_CONFIG") or DEFAULT_PATH)


def load(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment and check the whole config; raise ConfigError."""
    env = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except PermissionError:
        raise ConfigError(f"config file not readable: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"config file not readable: {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return build(_flatten(raw, path), path, env)


def _flatten(raw: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """TOML tables -> {section: {key: value}}; `[notify.email]` becomes "notify.email"."""
    out: dict[str, dict[str, Any]] = {}
    for name, table in raw.items():
        if name == "notify" and isinstance(table, dict):
            for sub, subtable in table.items():
                out[f"notify.{sub}"] = subtable
        else:
            out[name] = table
    for name, table in out.items():
        if name not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{name}]")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
    return out


def _env_overrides(
    sections: dict[str, dict[str, Any]], path: Path, env: Mapping[str, str]
) -> None:
    by_prefix = {
        "WATCHER_" + name.replace(".", "_").upper() + "_": name for name in SECTIONS
    }
    for var, value in env.items():
        if not var.startswith("WATCHER_") or var == "WATCHER_CONFIG":
            continue
        # Longest prefix first so WATCHER_NOTIFY_EMAIL_X is not read as section "notify".
        for prefix in sorted(by_prefix, key=len, reverse=True):
            if var.startswith(prefix):
                section = by_prefix[prefix]
                key = var[len(prefix):].lower()
                cls = SECTIONS[section][1]
                names = {f.name for f in dataclasses.fields(cls)}
                if key not in names:
                    raise ConfigError(f"{path}: environment: {var} names no key of [{section}]")
                sections.setdefault(section, {})[key] = from_env(value)
                break
        # A WATCHER_* variable naming no section is someone else's (a test marker, another
        # tool): left alone. One naming a section but no key of it is a typo: an error.


def build(
    sections: dict[str, dict[str, Any]], path: Path, env: Mapping[str, str]
) -> Config:
    _env_overrides(sections, path, env)
    values: dict[str, Any] = {"path": path}
    for name, (attr, cls, optional) in SECTIONS.items():
        table = sections.get(name)
        if table is None and optional:
            values[attr] = None
            continue
        values[attr] = _section(cls, name, table or {}, path)
    bg = values["bluegreen"]
    if bg is not None and not bg.programs and not bg.health_urls:
        values["bluegreen"] = None  # an empty [bluegreen] section means blue/green is off
    if values["fleet"] is not None and not values["fleet"].redis_url:
        values["fleet"] = None  # [fleet] without redis_url: this server acts alone
    cfg = Config(**values)
    check(cfg)
    return cfg


def _section(cls: type, name: str, table: dict[str, Any], path: Path) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            raise ConfigError(f"{path}: unknown key {name}.{key}")
    kwargs: dict[str, Any] = {}
    for fname, f in fields.items():
        where = f"{path}: {name}.{fname}"
        if isinstance(table.get(fname), EnvValue):  # say where the bad value really came from
            where += f" (from WATCHER_{name.replace('.', '_').upper()}_{fname.upper()})"
        if fname not in table:
            no_default = f.default is dataclasses.MISSING
            if no_default and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: missing required key {name}.{fname}")
            continue
        is_duration = bool(f.metadata.get("duration"))
        kwargs[fname] = convert(table[fname], hints[fname], where, is_duration)
        if is_duration and kwargs[fname] <= 0 and not (f.metadata.get("zero_off")
                                                       and kwargs[fname] == 0):
            raise ConfigError(f"{where} must be more than 0 seconds")
        if is_duration:
            rules.duration(where, kwargs[fname])
        choices = CHOICES.get((name, fname))
        if choices and kwargs[fname] not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(choices)}")
    return cls(**kwargs)
