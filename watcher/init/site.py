"""One site's values, and every file `watcher init` writes for it (pure: no I/O).

`Site` holds what an operator decides (names, paths, blue/green) and what `--from-checkout`
reads from the Django project. `files()` maps each output path (relative to init's DIR) to
its rendered text; `context()` is the one place a template's values come from, so the
checked-in examples (scripts/shipped.py) and init's output cannot disagree on a value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from watcher.init.render import Value, render_template

ETC = "/etc/watcher"


@dataclass(frozen=True)
class Site:
    app: str
    root: str
    remote: str
    branch: str = "main"
    settings: str = ""  # DJANGO_SETTINGS_MODULE ("" = what manage.py sets)
    wsgi: str = ""  # WSGI module ("" = <settings package>.wsgi)
    bluegreen: bool = False
    port: int = 0  # single program: Gunicorn on 127.0.0.1:port; 0 = a unix socket
    server_names: tuple[str, ...] = ("example.com", "www.example.com")
    user: str = "deploy"  # watcher's user: the secrets, repo/, .watcher/, the control socket
    app_user: str = ""  # the app's (Gunicorn, Celery); "" = the same as `user`
    python: str = "/usr/bin/python3"
    manage: str = "manage.py"
    requirements: tuple[str, ...] = ("requirements.txt",)
    shared: tuple[str, ...] = (".env",)
    dotenv: bool = True  # settings read shared/.env
    static_url: str = "/static/"
    static_root: str = "staticfiles"  # relative: inside the release; absolute: outside
    media_url: str = "/media/"
    media: str = ""  # the shared dir holding uploads ("" = none)
    healthz: bool = True  # the app answers /healthz with "ok <REVISION>"
    celery: str = ""  # the Celery app (`celery -A`), "" = no Celery
    celery_beat: bool = False
    settings_env: bool = False  # put DJANGO_SETTINGS_MODULE into the programs' environment
    wsgi_arg: bool = False  # name the WSGI app on Gunicorn's command line
    gunicorn_conf: bool = True  # the app ships gunicorn.conf.py at its root
    hosts_setting: str = "Django's ALLOWED_HOSTS"
    notes: tuple[str, ...] = field(default=())  # what --from-checkout found, for NEXT-STEPS

    @property
    def wsgi_module(self) -> str:
        return self.wsgi or f"{(self.settings or self.app + '.settings').split('.')[0]}.wsgi"

    @property
    def socket(self) -> bool:
        return not self.bluegreen and not self.port

    @property
    def programs(self) -> tuple[str, ...]:
        """The web programs (blue/green pair or one)."""
        return (f"{self.app}_blue", f"{self.app}_green") if self.bluegreen else (self.app,)

    @property
    def workers(self) -> tuple[str, ...]:
        """Celery's programs: restarted (never HUPed) after the web programs pass health."""
        if not self.celery:
            return ()
        return (f"{self.app}_celery", *((f"{self.app}_celerybeat",) if self.celery_beat else ()))


def toml_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def ssh_remote(remote: str) -> bool:
    return remote.startswith("ssh://") or ("@" in remote and ":" in remote.split("@", 1)[1]
                                          and "://" not in remote)


def remote_host(remote: str) -> str:
    return urlsplit(remote).hostname or remote.split("@", 1)[-1].split(":", 1)[0]


def forge_of(remote: str) -> str:
    host = remote_host(remote)
    for forge in ("github", "gitlab", "bitbucket"):
        if forge in host:
            return forge
    return "gitea" if ("gitea" in host or "forgejo" in host or "codeberg" in host) else "generic"


def context(site: Site, **overrides: Value) -> dict[str, Value]:
    """Every value any template uses; `overrides` tune wording for the checked-in examples."""
    s = site
    socket_dir = f"/run/{s.app}"
    static_outside = s.static_root.startswith("/")
    static_dir = s.static_root if static_outside else f"{s.root}/current/{s.static_root}"
    https = urlsplit(s.remote).scheme in ("http", "https")
    ssh = ssh_remote(s.remote)
    health_path = "/healthz" if s.healthz else "/"
    if s.bluegreen:
        health_url = ""
        health_note = "blue/green: each colour's own URL in [bluegreen] is checked"
    elif s.socket:
        health_url = f"http://127.0.0.1:8000{health_path}"
        health_note = "through Nginx's loopback-only server (the app has no TCP port)"
    else:
        health_url = f"http://127.0.0.1:{s.port}{health_path}"
        health_note = "Gunicorn itself, on loopback"
    two_users = bool(s.app_user) and s.app_user != s.user
    env_mode = (f"mode 0440, root:{s.app_user}-env" if two_users
                else f"mode 0600, owned by {s.user}")
    shared_note = (f"# Linked from {s.root}/shared/ into every release"
                   + (f": .env holds the settings' secrets ({env_mode})." if s.dotenv else "."))
    bind = f"unix:{socket_dir}/gunicorn.sock" if s.socket else f"127.0.0.1:{s.port or 8000}"
    values: dict[str, Value] = {
        "app": s.app, "root": s.root, "user": s.user, "home": f"/home/{s.user}",
        "app_user": s.app_user or s.user, "app_home": f"/home/{s.app_user or s.user}",
        "remote": s.remote, "branch": s.branch, "python": s.python, "manage": s.manage,
        "settings": s.settings, "wsgi": s.wsgi_module,
        "watcher_bin": "/opt/watcher/bin/watcher", "config_path": f"{ETC}/watcher.toml",
        "log_dir": "/var/log/supervisor", "site_title": s.app,
        "matching_files": "supervisor/supervisord.conf, supervisor/conf.d/ (beside this file)",
        "bluegreen_where": "# `watcher init --bluegreen --force` (it writes the pair, and their"
                           " published socket as\n# Nginx's upstream)",
        "bluegreen_pair": "the blue/green pair (`watcher init --bluegreen`)",
        "zero_loss_ref": "", "users_doc": "NEXT-STEPS.md",
        "two_users": two_users, "env_mode": env_mode,
        "ssh_key_file": f"{ETC}/deploy_key" if ssh else "",
        "known_hosts_file": f"{ETC}/known_hosts" if ssh else "",
        "token_file": f"{ETC}/git_token" if https else "",
        "requirements": toml_list(s.requirements), "shared": toml_list(s.shared),
        "shared_note": shared_note,
        "programs": toml_list(() if s.bluegreen else (s.app,)),
        "bluegreen": s.bluegreen, "socket": s.socket, "socket_dir": socket_dir,
        "port": str(s.port or 8000), "blue_port": "8001", "green_port": "8002",
        "health_port": "8000", "health_url": health_url, "health_path": health_path,
        # Blue/green: each colour's own socket, and the link watcher publishes (issue 17).
        "run_dir": f"{s.root}/run", "live_socket": f"{s.root}/run/live.sock",
        "blue_socket": f"{s.root}/run/blue.sock", "green_socket": f"{s.root}/run/green.sock",
        "health_note": health_note,
        "expect_revision": s.healthz,
        "webhook_listen": "127.0.0.1:9090", "webhook_secret_file": f"{ETC}/webhook_secret",
        "upstream": f"{s.app}_app",
        "upstream_server": f"unix:{socket_dir}/gunicorn.sock" if s.socket
        else f"127.0.0.1:{s.port}",
        "program_file": f"supervisor/conf.d/{s.app}.conf" if not s.bluegreen
        else f"supervisor/conf.d/{s.app}_blue.conf, {s.app}_green.conf",
        "nginx_file": f"nginx/{s.app}.conf", "guide": "NEXT-STEPS.md",
        "server_names": " ".join(s.server_names), "primary_domain": s.server_names[0],
        "certbot_domains": " ".join(f"-d {n}" for n in s.server_names),
        "hosts_setting": s.hosts_setting, "tls_hint": True, "cdn_note": not static_outside,
        "static_outside": static_outside, "static_url": s.static_url,
        "static_alias": static_dir.rstrip("/") + "/",
        "media": bool(s.media), "media_url": s.media_url,
        "media_alias": f"{s.root}/shared/{s.media}/",
        "dotenv": s.dotenv, "example": False, "socket_example": False, "reasons": True,
        "colour_blue": False, "colour_green": False, "bluegreen_hint": not s.socket,
        "wsgi_arg": f" {s.wsgi_module}:application" if s.wsgi_arg else "",
        "extra_env": f',DJANGO_SETTINGS_MODULE="{s.settings}"' if s.settings_env else "",
        "bind": bind, "bind_env": f',GUNICORN_BIND="{bind}"', "bind_args": "",
        "colour_socket": "",
        "autostart": True, "program": s.app, "celery": s.celery,
        "celery_program": f"{s.app}_celery", "beat_program": f"{s.app}_celerybeat",
        "celery_beat": s.celery_beat, "workers": toml_list(s.workers),
        "forge": forge_of(s.remote), "remote_host": remote_host(s.remote),
        "forge_type": forge_of(s.remote) if forge_of(s.remote) != "generic" else "github",
        "ssh": ssh, "https": https,
        "healthz": s.healthz, "gunicorn_conf": s.gunicorn_conf,
    }
    values.update(overrides)
    return values


def program_context(site: Site, base: Mapping[str, Value], colour: str = "") -> dict[str, Value]:
    """The values for one web program: the single one, or a colour of the pair."""
    values = dict(base)
    if colour:
        port = values[f"{colour}_port"]
        sock = values[f"{colour}_socket"]
        # Both binds on the command line (it replaces gunicorn.conf.py's `bind`): the port
        # for watcher's health check, the socket Nginx reaches once watcher publishes it.
        values.update(program=f"{site.app}_{colour}", port=port, bind=f"127.0.0.1:{port}",
                      bind_env="", bind_args=f" --bind 127.0.0.1:{port} --bind unix:{sock}",
                      colour_socket=sock,
                      autostart=colour == "blue", colour_blue=colour == "blue",
                      colour_green=colour == "green",
                      reasons=colour == "blue" and not values["example"],
                      bluegreen_hint=False,
                      extra_env=f'{values["extra_env"]},GUNICORN_PROC_NAME="{site.app}_{colour}"')
    return values


def files(site: Site, outdir: str = ".") -> dict[str, str]:
    """Output path (relative to init's DIR) -> text, for everything init writes."""
    base = context(site, outdir=outdir)
    out: dict[str, str] = {"watcher.toml": render_template("watcher.toml", base)}
    out["supervisor/supervisord.conf"] = render_template("supervisord.conf", base)
    for colour in ("blue", "green") if site.bluegreen else ("",):
        ctx = program_context(site, base, colour)
        out[f"supervisor/conf.d/{ctx['program']}.conf"] = render_template("program.conf", ctx)
    if site.celery:
        out[f"supervisor/conf.d/{site.app}_celery.conf"] = render_template("celery.conf", base)
    out["supervisor/conf.d/watcher.conf"] = render_template("watcher.conf", base)
    out[f"nginx/{site.app}.conf"] = render_template("nginx.conf", base)
    out["systemd/supervisord.service"] = render_template("supervisord.service", base)
    out["systemd/watcher.service"] = render_template("watcher.service", base)
    if site.socket:
        out[f"tmpfiles.d/{site.app}.conf"] = (
            f"d /run/{site.app} 0750 {site.app_user or site.user} www-data -\n")
    if not site.gunicorn_conf:
        out["gunicorn.conf.py"] = render_template("gunicorn.conf.py", base)
    notes = ("What --from-checkout read:\n\n" + "".join(f"- {n}\n" for n in site.notes)
             if site.notes else "No checkout was read: `--from-checkout PATH` fills in the Django"
             " details.\n")
    out["NEXT-STEPS.md"] = render_template("NEXT-STEPS.md", dict(
        base, notes=notes, config_in_place=outdir.rstrip("/") == ETC))
    return out
