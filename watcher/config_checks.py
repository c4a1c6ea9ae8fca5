"""Cross-key checks of a built `Config`, run once at start by `config_load.build`.

A type alone catches a wrong value of one key (`config_values`, `config_rules`); what needs
two keys, or one whole section, is checked here, every error naming the key and the file.
`check_email` and `check_fleet` also serve `watcher check` and the notifier at their use.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from watcher import config_rules as rules
from watcher.config import Config, EmailConfig, FleetConfig, ForgeConfig
from watcher.config_values import unsupported_uv_args
from watcher.errors import ConfigError
from watcher.kinds import DEPLOY_OUTCOMES


def check(cfg: Config) -> None:
    """Every rule between keys of `cfg`; ConfigError naming the key (exit code 2)."""
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

