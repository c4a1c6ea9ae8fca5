"""Configuration: one TOML file plus `WATCHER_<SECTION>_<KEY>` overrides, checked once at start.

Everything is converted into frozen dataclasses here; every error names the key and the file.
Secrets are never values in the config: only `*_file` paths, read at each use by `read_secret`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import parse_qs, urlsplit

from watcher import config_rules as rules
from watcher.config_rules import is_loopback
from watcher.config_values import (
    EnvValue,
    convert,
    from_env,
    parse_duration,
    unsupported_uv_args,
)
from watcher.errors import ConfigError
from watcher.kinds import DEPLOY_OUTCOMES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_PATH = "/etc/watcher/watcher.toml"

__all__ = ["Config", "is_loopback", "load", "parse_duration", "read_secret"]


def _dur(default: float) -> Any:
    return field(default=default, metadata={"duration": True})


@dataclass(frozen=True)
class AppConfig:
    name: str
    root: Path
    keep_releases: int = 5


@dataclass(frozen=True)
class GitConfig:
    remote: str
    branch: str = "main"
    ssh_key_file: str = ""
    known_hosts_file: str = ""
    token_file: str = ""
    token_username: str = "x-access-token"  # noqa: S105 - a user name, not a secret
    interval: float = _dur(60.0)
    timeout: float = _dur(60.0)
    verify: str = "off"  # off | ssh | gpg
    allowed_signers_file: str = ""
    gpg_keys_file: str = ""
    tag_pattern: str = ""
    prereleases: bool = False
    paths: tuple[str, ...] = ()
    ignore_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildConfig:
    python: str = "python3"
    requirements: tuple[str, ...] = ("requirements.txt",)
    pip_args: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    timeout: float = _dur(900.0)
    installer: str = "uv"  # uv | pip


@dataclass(frozen=True)
class DjangoConfig:
    manage: str = "manage.py"
    settings: str = ""
    migrate: str = "auto"
    collectstatic: str = "auto"
    check_deploy: bool = False
    timeout: float = _dur(600.0)
    migration_safety: str = "refuse"  # refuse | warn | off (DESIGN §2a)


@dataclass(frozen=True)
class HooksConfig:
    pre_switch: tuple[tuple[str, ...], ...] = ()
    post_switch: tuple[tuple[str, ...], ...] = ()
    timeout: float = _dur(300.0)


@dataclass(frozen=True)
class SupervisorConfig:
    url: str = "unix:///run/supervisor.sock"
    username: str = ""
    password_file: str = ""
    programs: tuple[str, ...] = ()
    reload: str = "auto"
    timeout: float = _dur(10.0)
    start_timeout: float = _dur(60.0)
    workers: tuple[str, ...] = ()


@dataclass(frozen=True)
class BlueGreenConfig:
    programs: tuple[str, ...] = ()
    health_urls: tuple[str, ...] = ()
    settle: float = _dur(2.5)
    # Optional: the health URL through Nginx (e.g. "http://127.0.0.1/healthz"). When set, the
    # settle ends as soon as Nginx answers it with the new sha (so Nginx routes to the new
    # colour again), at most `settle` (issue 12).
    ready_url: str = ""
    # Optional, together: each colour's own unix socket (besides its port), and the path
    # Nginx's upstream names, a symlink watcher points at the live colour's socket once that
    # colour passed its health check (issue 17). With them no settle is needed.
    sockets: tuple[str, ...] = ()
    publish: str = ""


@dataclass(frozen=True)
class HealthConfig:
    url: str = ""
    expect_revision: bool = True
    timeout: float = _dur(30.0)
    interval: float = _dur(0.2)
    smoke_paths: tuple[str, ...] = ()
    failures: int = 3


@dataclass(frozen=True)
class ReportConfig:
    url: str = ""
    token_file: str = ""
    format: str = "json"
    timeout: float = _dur(5.0)
    budget: float = _dur(15.0)


@dataclass(frozen=True)
class WebhookConfig:
    listen: str = "127.0.0.1:9090"
    secret_file: str = ""


@dataclass(frozen=True)
class EmailConfig:
    smtp_url: str = ""
    api_url: str = ""
    username: str = ""
    password_file: str = ""
    sender: str = "watcher@example.com"
    to: tuple[str, ...] = ()
    on: tuple[str, ...] = ("failed", "rolled_back", "rollback_failed")


@dataclass(frozen=True)
class ForgeConfig:
    type: str = ""  # github | gitlab | gitea | bitbucket
    api_url: str = ""
    repo: str = ""
    token_file: str = ""
    environment: str = "production"
    target_url: str = ""
    timeout: float = _dur(5.0)  # per HTTP attempt
    budget: float = _dur(5.0)  # what one send may add to a deploy (then it only spools)


@dataclass(frozen=True)
class ScheduleConfig:
    windows: tuple[str, ...] = ()
    timezone: str = "UTC"


@dataclass(frozen=True)
class FleetConfig:
    redis_url: str = ""
    password_file: str = ""
    host: str = ""
    max_parallel: int = 1
    lease: float = _dur(30.0)
    wait: float = _dur(600.0)  # longest wait for another server's migration or a rollout slot


@dataclass(frozen=True)
class Config:
    path: Path
    app: AppConfig
    git: GitConfig
    build: BuildConfig = BuildConfig()
    django: DjangoConfig = DjangoConfig()
    hooks: HooksConfig = HooksConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    bluegreen: BlueGreenConfig | None = None
    health: HealthConfig = HealthConfig()
    report: ReportConfig = ReportConfig()
    webhook: WebhookConfig = WebhookConfig()
    email: EmailConfig | None = None
    forge: ForgeConfig | None = None
    schedule: ScheduleConfig = ScheduleConfig()
    fleet: FleetConfig | None = None

    @property
    def state_dir(self) -> Path:
        return self.app.root / ".watcher"


# TOML section name -> (Config attribute, dataclass, optional section)
SECTIONS: dict[str, tuple[str, type, bool]] = {
    "app": ("app", AppConfig, False),
    "git": ("git", GitConfig, False),
    "build": ("build", BuildConfig, False),
    "django": ("django", DjangoConfig, False),
    "hooks": ("hooks", HooksConfig, False),
    "supervisor": ("supervisor", SupervisorConfig, False),
    "bluegreen": ("bluegreen", BlueGreenConfig, True),
    "health": ("health", HealthConfig, False),
    "report": ("report", ReportConfig, False),
    "webhook": ("webhook", WebhookConfig, False),
    "notify.email": ("email", EmailConfig, True),
    "forge": ("forge", ForgeConfig, True),
    "schedule": ("schedule", ScheduleConfig, False),
    "fleet": ("fleet", FleetConfig, True),
}

_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("django", "migrate"): ("auto", "always", "never"),
    ("django", "collectstatic"): ("auto", "always", "never"),
    ("supervisor", "reload"): ("auto", "hup", "rolling", "restart", "bluegreen"),
    ("report", "format"): ("json", "slack", "betterstack", "datadog"),
    ("git", "verify"): ("off", "ssh", "gpg"),
    ("build", "installer"): ("uv", "pip"),
    ("django", "migration_safety"): ("refuse", "warn", "off"),
    ("forge", "type"): ("github", "gitlab", "gitea", "bitbucket"),
}


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
    _check(cfg)
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
        if is_duration and kwargs[fname] <= 0:
            raise ConfigError(f"{where} must be more than 0 seconds")
        if is_duration:
            rules.duration(where, kwargs[fname])
        choices = _CHOICES.get((name, fname))
        if choices and kwargs[fname] not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(choices)}")
    return cls(**kwargs)


def _check(cfg: Config) -> None:
    p = cfg.path
    if not cfg.app.root.is_absolute():
        raise ConfigError(f"{p}: app.root must be an absolute path")
    if cfg.app.keep_releases < 2:
        raise ConfigError(f"{p}: app.keep_releases must be at least 2 (live and previous)")
    if not cfg.app.name:
        raise ConfigError(f"{p}: app.name must not be empty")
    if not cfg.git.remote:
        raise ConfigError(f"{p}: git.remote must not be empty")
    _check_values(cfg)
    bg = cfg.bluegreen
    if bg is not None and (len(bg.programs) != 2 or len(bg.health_urls) != 2):
        raise ConfigError(
            f"{p}: bluegreen.programs and bluegreen.health_urls need two entries each"
        )
    if bg is not None:
        rules.published_socket(f"{p}: bluegreen", bg.sockets, bg.publish)
    if cfg.supervisor.reload == "bluegreen" and bg is None:
        raise ConfigError(f"{p}: supervisor.reload = \"bluegreen\" needs a [bluegreen] section")
    if not cfg.supervisor.programs and bg is None:
        raise ConfigError(f"{p}: supervisor.programs is empty and there is no [bluegreen] section")
    if not cfg.build.requirements:
        raise ConfigError(f"{p}: build.requirements must name at least one file")
    _check_control(cfg)
    _check_health(cfg)
    _check_speed(cfg)
    if cfg.email is not None and (cfg.email.smtp_url or cfg.email.api_url):
        check_email(cfg.email, str(p))
    if cfg.forge is not None:
        _check_forge(cfg.forge, p)
    _check_workers(cfg, p)
    if cfg.fleet is not None:
        check_fleet(cfg.fleet, str(p))


def _check_values(cfg: Config) -> None:
    """Values a type alone does not catch (config_rules.py), each naming its key."""
    p = cfg.path
    rules.remote(f"{p}: git.remote", cfg.git.remote, cfg.git.token_file)
    rules.branch(f"{p}: git.branch", cfg.git.branch)
    rules.supervisor_url(f"{p}: supervisor.url", cfg.supervisor.url)
    rules.not_blank(f"{p}: build.python", cfg.build.python)
    rules.release_path(f"{p}: django.manage", cfg.django.manage)
    for rel in cfg.build.requirements:
        rules.release_path(f"{p}: build.requirements", rel)
    for rel in cfg.build.shared:
        rules.release_path(f"{p}: build.shared", rel, shared=True)
    if cfg.health.url:
        rules.web_url(f"{p}: health.url", cfg.health.url, credentials=True)
    for url in cfg.bluegreen.health_urls if cfg.bluegreen else ():
        rules.web_url(f"{p}: bluegreen.health_urls", url, credentials=True)
    if cfg.report.url:
        rules.web_url(f"{p}: report.url", cfg.report.url)
    rules.listen(f"{p}: webhook.listen", cfg.webhook.listen)


def check_email(cfg: EmailConfig, where: str) -> None:
    """[notify.email] as a whole; ConfigError naming the key (exit code 2)."""
    if cfg.smtp_url and cfg.api_url:
        raise ConfigError(f"{where}: set notify.email.smtp_url or notify.email.api_url, not both")
    if cfg.smtp_url and not _smtp_url_ok(cfg.smtp_url):
        raise ConfigError(f"{where}: notify.email.smtp_url must be smtp://host[:port] or "
                          "smtps://host[:port], without credentials (use password_file)")
    if cfg.api_url and urlsplit(cfg.api_url).scheme not in ("http", "https"):
        raise ConfigError(f"{where}: notify.email.api_url must be an http(s) URL")
    if not cfg.to or not all("@" in a for a in cfg.to):
        raise ConfigError(f"{where}: notify.email.to needs at least one address")
    if "@" not in cfg.sender:
        raise ConfigError(f"{where}: notify.email.sender must be an address")
    unknown = [o for o in cfg.on if o not in DEPLOY_OUTCOMES]
    if unknown:
        raise ConfigError(f"{where}: notify.email.on: unknown outcome(s) {unknown}; "
                          f"expected some of {', '.join(DEPLOY_OUTCOMES)}")


def _smtp_url_ok(url: str) -> bool:
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError on a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("smtp", "smtps") and bool(parts.hostname) and not parts.password


# -- [forge] and supervisor.workers (issue 15) ------------------------------------------
def _check_forge(forge: ForgeConfig, p: Path) -> None:
    if not forge.type:
        raise ConfigError(f"{p}: forge.type is required in [forge] "
                          "(github, gitlab, gitea or bitbucket)")
    if not forge.repo:
        raise ConfigError(f"{p}: forge.repo is required in [forge] (owner/name)")
    nested = forge.type == "gitlab"  # GitLab: group/subgroup/project, or the numeric id
    parts = forge.repo.split("/")
    if not (nested and forge.repo.isdigit()) and (
            len(parts) < 2 or (len(parts) > 2 and not nested) or not all(parts)):
        raise ConfigError(f"{p}: forge.repo must be owner/name, got {forge.repo!r}")
    if not forge.token_file:
        raise ConfigError(f"{p}: forge.token_file is required in [forge]")
    if forge.api_url:
        url = urlsplit(forge.api_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"{p}: forge.api_url must be an http(s) URL")
        if url.username or url.password:
            raise ConfigError(f"{p}: forge.api_url must not carry credentials; "
                              "put the token in forge.token_file")
    if not forge.environment:
        raise ConfigError(f"{p}: forge.environment must not be empty")
    if forge.target_url and urlsplit(forge.target_url).scheme not in ("http", "https"):
        raise ConfigError(f"{p}: forge.target_url must be an http(s) URL")


def _check_workers(cfg: Config, p: Path) -> None:
    workers = cfg.supervisor.workers
    if len(set(workers)) != len(workers):
        raise ConfigError(f"{p}: supervisor.workers names a program twice")
    web = set(cfg.supervisor.programs) | set(cfg.bluegreen.programs if cfg.bluegreen else ())
    both = sorted(web & set(workers))
    if both:
        raise ConfigError(f"{p}: {', '.join(both)} is in supervisor.workers and also a web "
                          "program: workers are never HUPed, list it in one place only")
    for name in workers:
        if not name or name.endswith((":", ":*")):
            raise ConfigError(f"{p}: supervisor.workers: {name!r} must name one program "
                              "('name' or 'group:name')")


def _check_control(cfg: Config) -> None:
    """[git] verify, tag_pattern, paths, ignore_paths and [schedule] (issue 14)."""
    from watcher.gates import check_patterns  # imported here: pathspec is only needed then
    from watcher.schedule import Schedule

    p, g = cfg.path, cfg.git
    if g.verify == "ssh" and not g.allowed_signers_file:
        raise ConfigError(f"{p}: git.verify = \"ssh\" needs git.allowed_signers_file")
    if g.verify == "gpg" and not g.gpg_keys_file:
        raise ConfigError(f"{p}: git.verify = \"gpg\" needs git.gpg_keys_file")
    if g.prereleases and not g.tag_pattern:
        raise ConfigError(f"{p}: git.prereleases needs git.tag_pattern")
    for key, patterns in (("paths", g.paths), ("ignore_paths", g.ignore_paths)):
        try:
            check_patterns(patterns)
        except ValueError as exc:
            raise ConfigError(f"{p}: git.{key}: {exc}") from None
    try:
        Schedule.parse((), cfg.schedule.timezone)
    except ValueError as exc:
        raise ConfigError(f"{p}: schedule.timezone: {exc}") from None
    for window in cfg.schedule.windows:
        try:
            Schedule.parse((window,), cfg.schedule.timezone)
        except ValueError as exc:
            raise ConfigError(f"{p}: schedule.windows: {exc}") from None


def _check_health(cfg: Config) -> None:
    """health.failures and health.smoke_paths (steps 12 and 9a)."""
    p, health = cfg.path, cfg.health
    if health.failures < 1:
        raise ConfigError(f"{p}: health.failures must be at least 1")
    if health.smoke_paths and not health.url and cfg.bluegreen is None:
        raise ConfigError(f"{p}: health.smoke_paths needs health.url (or [bluegreen]): its "
                          "path and Host header")
    for path in health.smoke_paths:
        if not path.startswith("/") or path.startswith("//"):
            raise ConfigError(f"{p}: health.smoke_paths: {path!r} must be a path starting "
                              "with / (no scheme or host: the health URL's host is used)")
    if health.url and urlsplit(health.url).scheme not in ("http", "https"):
        raise ConfigError(f"{p}: health.url must start with http:// or https://")


# -- issue 12: installer, blue/green settle ---------------------------------------------
# Nginx's `fail_timeout` for the blue/green upstreams in examples/nginx/mysite.conf (1s).
# Nginx counts it in whole seconds, so a colour it marked failed can stay skipped up to
# fail_timeout + 1 s; the settle must be longer than that, or the old colour could stop
# while Nginx still skips the new one and every request would get a 502.
NGINX_FAIL_TIMEOUT_S = 1.0
SETTLE_FLOOR_S = NGINX_FAIL_TIMEOUT_S + 1.0


def _check_speed(cfg: Config) -> None:
    p = cfg.path
    if cfg.build.installer == "uv":
        bad = unsupported_uv_args(cfg.build.pip_args)
        if bad:
            raise ConfigError(
                f"{p}: build.pip_args: {bad[0]!r} is not accepted by `uv pip install` "
                f"(build.installer = \"uv\"); drop it, or set build.installer = \"pip\""
            )
    bg = cfg.bluegreen
    if bg is not None and bg.settle <= SETTLE_FLOOR_S:
        raise ConfigError(
            f"{p}: bluegreen.settle must be more than {SETTLE_FLOOR_S:g}s (Nginx's "
            f"fail_timeout of {NGINX_FAIL_TIMEOUT_S:g}s + 1s in examples/nginx/mysite.conf)"
        )


def check_fleet(cfg: FleetConfig, where: str) -> None:
    """[fleet] (DESIGN §8); ConfigError naming the key (exit code 2)."""
    parts = urlsplit(cfg.redis_url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{where}: fleet.redis_url must start with redis://, rediss:// or "
                          "unix://")
    if parts.password:
        raise ConfigError(f"{where}: fleet.redis_url must not carry a password; put it in "
                          "fleet.password_file")
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ConfigError(f"{where}: fleet.redis_url: unix:// needs an absolute socket path")
        db = parse_qs(parts.query).get("db", ["0"])[0]
    else:
        if not parts.hostname:
            raise ConfigError(f"{where}: fleet.redis_url needs a host")
        db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"{where}: fleet.redis_url: the database must be a number, not {db!r}")
    if cfg.max_parallel < 1:
        raise ConfigError(f"{where}: fleet.max_parallel must be at least 1")
    if cfg.lease < 1:
        raise ConfigError(f"{where}: fleet.lease must be at least 1s (it is renewed every "
                          "third of it)")


def read_secret(path: str, key: str) -> str:
    """Read a `*_file` secret at the moment of use, so rotation needs no restart."""
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
