"""Configuration: the sections of the TOML file as frozen dataclasses, one field a key.

`SECTIONS` maps each TOML section to its dataclass and `CHOICES` lists the keys with a fixed
set of values; `config_load` reads the file and the `WATCHER_<SECTION>_<KEY>` overrides into
a `Config`, and `config_checks` runs the rules between keys. Secrets are never values in the
config: only `*_file` paths, read at each use by `read_secret`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watcher.config_rules import is_loopback
from watcher.config_values import parse_duration
from watcher.errors import ConfigError

__all__ = ["Config", "is_loopback", "parse_duration", "read_secret"]


def _dur(default: float, *, zero_off: bool = False) -> Any:
    """A duration key; `zero_off`: 0 is allowed and turns the feature off."""
    return field(default=default, metadata={"duration": True, "zero_off": zero_off})


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
    warm_gate: float = _dur(1800.0, zero_off=True)  # a warm gate's wait for a deploy; 0: none


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

    def server(self) -> str:
        """This server's name in the fleet: `host`, else the hostname."""
        return self.host or socket.gethostname()


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

CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("django", "migrate"): ("auto", "always", "never"),
    ("django", "collectstatic"): ("auto", "always", "never"),
    ("supervisor", "reload"): ("auto", "hup", "rolling", "restart", "bluegreen"),
    ("report", "format"): ("json", "slack", "betterstack", "datadog"),
    ("git", "verify"): ("off", "ssh", "gpg"),
    ("build", "installer"): ("uv", "pip"),
    ("django", "migration_safety"): ("refuse", "warn", "off"),
    ("forge", "type"): ("github", "gitlab", "gitea", "bitbucket"),
}


def read_secret(path: str, key: str) -> str:
    """Read a `*_file` secret at the moment of use, so rotation needs no restart."""
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None


def server_name(cfg: Config) -> str:
    """The name reports, history and metrics give this server: fleet.host with [fleet], else
    the hostname."""
    return cfg.fleet.server() if cfg.fleet is not None else socket.gethostname()
