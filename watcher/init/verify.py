"""After `watcher init` wrote its files: check them the way `watcher check` would, as far as
that goes before the parts exist, plus what only init can check (the files themselves).

A bad config is exit 2; a part that does not exist yet (the deploy key, supervisord running
these files, the app root) is a warning, since NEXT-STEPS.md is what creates it.
"""

from __future__ import annotations

import configparser
import dataclasses
import shutil
import subprocess
import tempfile
from pathlib import Path

from watcher.init.site import Site


def validate(outdir: Path, site: Site) -> int:
    """`watcher check` on what was written (soft), the web programs' command lines, and
    `nginx -t` on the site when Nginx is installed; the exit code."""
    from watcher.checkup import command_problems, run_checks
    from watcher.config_load import load

    print(f"checking {outdir / 'watcher.toml'} (as `watcher check` would):")
    cfg = load(outdir / "watcher.toml", environ={})
    git = dataclasses.replace(cfg.git, timeout=min(cfg.git.timeout, 15.0))
    code = run_checks(dataclasses.replace(cfg, git=git), soft=True)
    current = f"{site.root}/current"
    for conf in sorted((outdir / "supervisor" / "conf.d").glob("*.conf")):
        ini = configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=False)
        ini.read(conf, encoding="utf-8")
        for section in ini.sections():
            program = section.removeprefix("program:")
            if program not in site.programs:
                continue
            problems = command_problems(ini[section].get("command", ""), current)
            for problem in problems:
                print(f"FAIL  program {program} ({conf.name}): {problem}")
            if not problems:
                print(f"ok    program {program}: --chdir {current}, no --preload")
            code = code or (2 if problems else 0)
    code = code or _nginx(outdir / "nginx" / f"{site.app}.conf")
    print(f"\nnext: {outdir / 'NEXT-STEPS.md'}")
    return code


def _nginx(site_conf: Path) -> int:
    """`nginx -t` on the site inside a throwaway main config (nothing is bound or served)."""
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None)
    if nginx is None:
        print(f"warn  nginx site: {site_conf.name} not tested (nginx is not installed here)")
        return 0
    with tempfile.TemporaryDirectory(prefix="watcher-init-") as tmp:
        temps = "".join(f"  {kind}_temp_path {tmp}/{kind};\n"
                        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
                        f"events {{}}\nhttp {{\n{temps}  include {site_conf};\n}}\n")
        try:
            res = subprocess.run([nginx, "-t", "-q", "-p", tmp, "-c", str(conf)],
                                 capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"warn  nginx site: nginx -t could not run ({exc})")
            return 0
    if res.returncode != 0:
        errors = [ln for ln in res.stderr.splitlines() if "[emerg]" in ln] or [res.stderr]
        print(f"FAIL  nginx site {site_conf.name}: {errors[0].strip()}")
        return 2
    print(f"ok    nginx site: nginx -t accepts {site_conf.name}")
    return 0
