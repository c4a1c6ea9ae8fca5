"""Run what `watcher init` wrote, for real, inside a temp dir.

The generated files name a server's paths (/run/supervisor.sock, /var/log/supervisor, user
deploy, /opt/watcher) and its fixed ports (8000, 8001/8002, 9090). `Sandboxed` moves exactly
those into the sandbox, the way tests/test_examples.py moves the shipped configs, and
changes nothing else, so what starts is what init wrote:

    with Sandboxed(base, outdir, root) as box:    # supervisord (app + watcher) and Nginx
        box.get("/healthz")                        # through Nginx
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from support.nginx import Nginx
from support.site import wheelhouse
from support.supervisord import SupervisordProcess, free_port


class _GeneratedSupervisord(SupervisordProcess):
    """supervisord started from the generated supervisord.conf and conf.d/ (moved)."""

    def __init__(self, tmpdir: Path, conf: str, programs: dict[str, str]) -> None:
        super().__init__(tmpdir)
        self._conf, self._files = conf, programs

    def _write_conf(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self._conf)
        for name, text in self._files.items():
            (self.conf_dir / name).write_text(text)


class Sandboxed:
    def __init__(self, base: Path, outdir: Path, *, app: str = "mysite",
                 watcher_autostart: bool = True) -> None:
        self.base, self.outdir, self.app = base, outdir, app
        self.ports = {p: free_port() for p in ("8000", "8001", "8002", "9090")}
        self.sock_dir = base / "run"
        self.sock_dir.mkdir(mode=0o750, exist_ok=True)
        self.watcher_autostart = watcher_autostart
        self.sv: _GeneratedSupervisord | None = None
        self.nginx: Nginx | None = None

    def moves(self, sv: SupervisordProcess) -> list[tuple[str, str]]:
        me = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        home = self.base / "home"
        home.mkdir(exist_ok=True)
        moves = [
            ("/run/supervisor.sock", str(sv.socket_path)),
            ("/run/supervisord.pid", str(sv.tmpdir / "supervisord.pid")),
            ("/var/log/supervisor", str(sv.tmpdir)),
            ("/etc/supervisor/conf.d", str(sv.conf_dir)),
            (f"/run/{self.app}/", f"{self.sock_dir}/"),
            ("chown=deploy:deploy", f"chown={me}:{group}"),
            ("user=deploy", f"user={me}"),
            (f"user={self.app}\n", f"user={me}\n"),  # the app's own user (two-user layout)
            ("/home/deploy", str(home)),
            (f"/home/{self.app}", str(home)),
            (f'USER="{self.app}",LOGNAME="{self.app}"', f'USER="{me}",LOGNAME="{me}"'),
            ("nodaemon=false", "nodaemon=true"),  # supervisord -n under systemd, ours a child
            ("/opt/watcher/bin/watcher", f"{sys.executable} -m watcher"),
            ("/etc/watcher/watcher.toml", str(self.outdir / "watcher.toml")),
            ("/etc/watcher/webhook_secret", str(self.base / "webhook_secret")),
        ]
        moves += [(f"127.0.0.1:{old}", f"127.0.0.1:{new}") for old, new in self.ports.items()]
        return moves

    def _moved(self, text: str, moves: list[tuple[str, str]]) -> str:
        for old, new in moves:
            text = text.replace(old, new)
        return text

    def start(self) -> Sandboxed:
        (self.base / "webhook_secret").write_text("init-test-webhook-secret\n")
        conf_d = self.outdir / "supervisor" / "conf.d"
        self.sv = _GeneratedSupervisord(self.base / "sv", "", {})
        moves = self.moves(self.sv)
        programs = {}
        for path in sorted(conf_d.glob("*.conf")):
            text = self._moved(path.read_text(), moves)
            if path.name != "watcher.conf" or not self.watcher_autostart:
                # No release exists when the sandbox boots: the app waits for the first deploy.
                text = text.replace("autostart=true", "autostart=false")
            programs[path.name] = text
        self.sv._conf = self._moved((self.outdir / "supervisor" / "supervisord.conf")
                                    .read_text(), moves)
        self.sv._files = programs
        # watcher.toml: the sandbox's paths and ports, and the wheel cache for the venvs.
        toml = self.outdir / "watcher.toml"
        text = self._moved(toml.read_text(), moves)
        text = text.replace("pip_args = []", f'pip_args = ["--no-index", "--find-links", '
                                              f'"{wheelhouse()}"]', 1)
        toml.write_text(text)
        self.sv.start()
        self.nginx = Nginx(self.base / "nginx", upstreams=[free_port()], root=self.base)
        site = self._moved((self.outdir / "nginx" / f"{self.app}.conf").read_text(), moves)
        site = re.sub(r"^\s*listen \[::\]:80;\n", "", site, flags=re.M)
        site = site.replace("listen 80;", f"listen 127.0.0.1:{self.nginx.port};")
        (self.base / "nginx" / "site.conf").write_text(site)
        self.nginx.start()
        return self

    def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        """GET through Nginx (its public server, or `port`): (status, body)."""
        assert self.nginx is not None
        url = f"http://127.0.0.1:{port or self.nginx.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, type(exc).__name__

    def log(self, program: str) -> str:
        assert self.sv is not None
        path = self.sv.tmpdir / f"{program}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        if self.sv is not None:
            self.sv.stop()

    def __enter__(self) -> Sandboxed:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
