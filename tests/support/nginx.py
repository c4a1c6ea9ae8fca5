"""A real Nginx for tests and benchmarks, run as our own child on 127.0.0.1:<free port>.

The site config is the shipped `examples/nginx/mysite.conf`, with its ports and paths moved
into the sandbox, so what the tests prove is what operators install:

    with Nginx(tmp, upstreams=[8001, 8002], root=site.root) as nginx:
        urllib.request.urlopen(nginx.url + "/healthz")

The shipped upstream is the published socket (`bluegreen.publish`, `<root>/run/live.sock`
once /srv/mysite is moved into the sandbox): `upstreams=[]` keeps it. Ports instead give the
two-port setup (without `publish`), with the server parameters the shipped file documents
for it (one port for a single-program setup).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.site import Site
from support.supervisord import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SITE_CONF = REPO_ROOT / "examples" / "nginx" / "mysite.conf"
NGINX_BIN = Path(shutil.which("nginx") or "/usr/sbin/nginx")


def render_site(upstreams: Sequence[int], port: int, root: Path, hooks_port: int = 9090) -> str:
    """The shipped server config with test ports and the sandbox's app root."""
    text = SITE_CONF.read_text(encoding="utf-8")
    if upstreams:
        ports = re.findall(r"^[#\s]*server 127\.0\.0\.1:\d+ (.*?);.*$", text, flags=re.M)
        if not ports:
            raise RuntimeError(f"{SITE_CONF}: no two-port upstream lines to take parameters from")
        lines = "".join(f"    server 127.0.0.1:{p} {ports[0]};\n" for p in upstreams)
        text, n = re.subn(r"(?:^[ \t]*server (?:unix:|127\.0\.0\.1:).*\n)+", lines, text,
                          count=1, flags=re.M)
        if n != 1:
            raise RuntimeError(f"{SITE_CONF}: no active upstream server lines")
    text = re.sub(r"^\s*listen \[::\]:80;\n", "", text, flags=re.M)
    text = re.sub(r"listen 80;", f"listen 127.0.0.1:{port};", text)
    text = text.replace("127.0.0.1:9090", f"127.0.0.1:{hooks_port}")
    return text.replace("/srv/mysite", str(root))


class Nginx:
    def __init__(self, tmpdir: Path, upstreams: Sequence[int], root: Path,
                 hooks_port: int = 9090) -> None:
        self.prefix = tmpdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = tmpdir / "nginx.conf"
        self.error_log = tmpdir / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None
        tmpdir.mkdir(parents=True, exist_ok=True)
        (tmpdir / "site.conf").write_text(render_site(upstreams, self.port, root, hooks_port))
        temp = {name: tmpdir / "tmp" / name for name in
                ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir(parents=True, exist_ok=True)
        # As root the workers would drop to nobody, who cannot read the sandbox (mode 0700).
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}worker_processes 1;\nevents {{ worker_connections 1024; }}\n"
            "http {\n"
            f"  access_log off;\n"
            f"  client_body_temp_path {temp['client_body']};\n"
            f"  proxy_temp_path {temp['proxy']};\n"
            f"  fastcgi_temp_path {temp['fastcgi']};\n"
            f"  uwsgi_temp_path {temp['uwsgi']};\n"
            f"  scgi_temp_path {temp['scgi']};\n"
            f"  include {tmpdir / 'site.conf'};\n"
            "}\n"
        )

    def start(self, timeout: float = 10.0) -> Nginx:
        globals_ = (f"daemon off; master_process on; pid {self.prefix / 'nginx.pid'}; "
                    f"error_log {self.error_log} warn;")
        test = subprocess.run([str(NGINX_BIN), "-t", "-q", "-c", str(self.conf), "-p",
                               str(self.prefix), "-g", globals_],
                              capture_output=True, text=True, timeout=30, check=False)
        if test.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {test.stderr}")
        self.proc = subprocess.Popen(
            [str(NGINX_BIN), "-c", str(self.conf), "-p", str(self.prefix), "-g", globals_],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited at start: {self.log_tail()}")
            try:
                urllib.request.urlopen(self.url + "/static/", timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # it answers (404/403 for a directory): up
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not come up: {self.log_tail()}")

    def log_tail(self, nbytes: int = 2000) -> str:
        try:
            return self.error_log.read_text(errors="replace")[-nbytes:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Fast shutdown (TERM) of master and workers; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        workers = _children_of(proc.pid)  # before the master goes: then they are re-parented
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in workers:  # only left when the master was killed
            with contextlib.suppress(OSError):
                if b"nginx" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children_of(ppid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == ppid and stat[0] != "Z":
            found.append(int(entry.name))
    return found


# -- a Site whose app runs as a blue/green pair ------------------------------------------
@dataclass
class BlueGreenSite:
    """`Site` with `mysite_blue`/`mysite_green` on their own ports; health.url is cleared
    (the colours' URLs are used). `mysite` stays in supervisor.programs as a stand-in for a
    worker program with `keep_mysite`, else supervisor.programs is emptied."""

    site: Site
    ports: dict[str, int]

    @classmethod
    def create(cls, reload: str = "auto", keep_mysite: bool = False, publish: bool = False,
               access_logs: bool = False, startsecs: int = 1,
               **site_kwargs: Any) -> BlueGreenSite:
        """`publish`: each colour also binds `<root>/run/<colour>.sock` and watcher publishes
        the live one as `<root>/run/live.sock` (the shipped setup; Nginx with upstreams=[]).
        `access_logs`: each colour's Gunicorn writes one (`access_log(colour)`).
        `startsecs`: the colours' (the shipped configs have 5)."""
        ports = {"blue": free_port(), "green": free_port()}
        urls = ", ".join(f'"http://127.0.0.1:{p}/healthz"' for p in ports.values())
        extra = (f'\n[bluegreen]\nprograms = ["mysite_blue", "mysite_green"]\n'
                 f"health_urls = [{urls}]\n")
        site = Site(extra_config=extra, **site_kwargs)
        try:
            cur, run = site.root / "current", site.root / "run"
            if publish:
                socks = ", ".join(f'"{run}/{colour}.sock"' for colour in ports)
                keys = f'sockets = [{socks}]\npublish = "{run}/live.sock"\n'
                text = site.config.read_text().replace("[bluegreen]\n", "[bluegreen]\n" + keys)
                site.config.write_text(text)
            for colour, port in ports.items():
                binds = (f" --bind 127.0.0.1:{port} --bind unix:{run}/{colour}.sock"
                         if publish else "")
                site.sv.add_program(f"mysite_{colour}", (
                    f"command={cur}/.venv/bin/gunicorn --chdir {cur} -c {cur}/gunicorn.conf.py"
                    f"{binds}\n"
                    f'environment=GUNICORN_BIND="127.0.0.1:{port}",GUNICORN_WORKERS="2",'
                    f'GUNICORN_PROC_NAME="mysite_{colour}"'
                    + (f',GUNICORN_ACCESS_LOG="{site.base}/access-{colour}.log"'
                       if access_logs else "") + "\n"
                    f"autostart=false\nautorestart=true\nstartsecs={startsecs}\n"
                    "startretries=1\n"
                    "stopsignal=TERM\nstopwaitsecs=25\nstopasgroup=true\nkillasgroup=true\n"))
            text = site.config.read_text()
            if not keep_mysite:
                text = text.replace('programs = ["mysite"]', "programs = []")
            text = re.sub(r'(\[health\]\n)url = ".*"', r'\1url = ""', text)
            text = text.replace('start_timeout = "30s"',
                                f'start_timeout = "30s"\nreload = "{reload}"')
            site.config.write_text(text)
        except BaseException:
            site.close()
            raise
        return cls(site, ports)

    def set_reload(self, mode: str) -> None:
        """Rewrite supervisor.reload in the sandbox's watcher.toml."""
        text = self.site.config.read_text()
        self.site.config.write_text(re.sub(r'^reload = ".*"$', f'reload = "{mode}"', text,
                                           flags=re.M))

    def set_ready_url(self, url: str) -> None:
        """Set (or with "", clear) bluegreen.ready_url in the sandbox's watcher.toml."""
        text = re.sub(r'^ready_url = ".*"\n', "", self.site.config.read_text(), flags=re.M)
        if url:
            text = text.replace("[bluegreen]\n", f'[bluegreen]\nready_url = "{url}"\n')
        self.site.config.write_text(text)

    def access_log(self, colour: str) -> Path:
        """That colour's Gunicorn access log (with `access_logs`)."""
        return self.site.base / f"access-{colour}.log"

    def program(self, colour: str) -> dict[str, Any]:
        info: dict[str, Any] = self.site.sv.rpc().getProcessInfo(f"mysite_{colour}")
        return info

    def statename(self, colour: str, settle: float = 30.0) -> str:
        """Its Supervisord state once out of STARTING: a swap ends as soon as the new colour
        answers its health URL, which is inside its `startsecs`."""
        deadline = time.monotonic() + settle
        while (state := str(self.program(colour)["statename"])) == "STARTING" \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        return state

    def served(self, colour: str) -> str:
        """The sha /healthz of that colour names, or what went wrong."""
        try:
            url = f"http://127.0.0.1:{self.ports[colour]}/healthz"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read().decode().split()[-1]
        except OSError as exc:
            return type(exc).__name__

    def recorded_colour(self) -> str:
        state = self.site.state()
        return str(state["releases"][state["live"]]["colour"])

    def close(self) -> None:
        self.site.close()
