"""Render the checked-in process configs from the templates `watcher init` uses.

    python scripts/shipped.py          # (re)write them: `make shipped`
    python scripts/shipped.py --check  # exit 1 and show a diff when one is stale

The files under supervisor/, systemd/, examples/nginx/ and examples/watcher.toml are the
templates in watcher/init/templates/ rendered with the example site's values, so what the
tests start for real is what `watcher init` writes. Edit the template, then run this.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from watcher.init.render import render_template  # noqa: E402 - after the path is set
from watcher.init.site import Site, context, program_context  # noqa: E402

MYSITE = Site(app="mysite", root="/srv/mysite", remote="git@github.com:acme/mysite.git",
              settings="mysite.settings", port=8000, shared=(".env", "data"),
              hosts_setting="MYSITE_ALLOWED_HOSTS", app_user="mysite")
# Wording that points into this repository rather than at init's own output.
REPO_TEXT = {
    "users_doc": "docs/deploy-on-a-vps.md §2", "zero_loss_ref": " (BENCHMARKS.md)",
    "bluegreen_pair": "the blue/green pair in conf.d-bluegreen/",
}
BLUEGREEN = Site(**{**MYSITE.__dict__, "bluegreen": True, "port": 0})
FULLSTACK = Site(**{**MYSITE.__dict__, "port": 0, "shared": (".env", "media"),
                    "media": "media"})
CELERY = Site(**{**FULLSTACK.__dict__, "celery": "mysite", "celery_beat": True})

EXAMPLE_TOML = {
    "site_title": "the example site",
    "matching_files": "supervisor/supervisord.conf, supervisor/conf.d/mysite.conf",
    "bluegreen_where": "# supervisor/conf.d-bluegreen/ instead of conf.d/mysite.conf and the"
                       " upstream of\n# examples/nginx/mysite.conf (the published socket)",
    "health_note": 'the example app answers "ok <REVISION>"',
    "shared_note": "# Linked from /srv/mysite/shared/ into every release. The example app reads"
                   " .env (KEY=VALUE:\n# DJANGO_SECRET_KEY, MYSITE_ALLOWED_HOSTS) and keeps its"
                   " sqlite database in data/.",
}


def rendered() -> dict[str, str]:
    """Repository path -> the text the templates give for it."""
    mysite, bluegreen, fullstack = (context(site, **REPO_TEXT)
                                    for site in (MYSITE, BLUEGREEN, FULLSTACK))
    out = {
        "examples/watcher.toml": render_template("watcher.toml", dict(mysite, **EXAMPLE_TOML)),
        "supervisor/supervisord.conf": render_template("supervisord.conf", mysite),
        "supervisor/conf.d/mysite.conf": render_template(
            "program.conf", program_context(MYSITE, mysite)),
        "supervisor/conf.d/watcher.conf": render_template("watcher.conf", mysite),
        "supervisor/conf.d-fullstack/mysite.conf": render_template(
            "program.conf", dict(fullstack, socket_example=True, reasons=False)),
        "systemd/supervisord.service": render_template("supervisord.service", mysite),
        "systemd/watcher.service": render_template("watcher.service", mysite),
        "examples/nginx/mysite.conf": render_template("nginx.conf", dict(
            bluegreen, upstream="mysite", program_file="supervisor/conf.d-bluegreen/",
            tls_hint=False, cdn_note=False)),
        "examples/nginx/mysite-fullstack.conf": render_template("nginx.conf", dict(
            fullstack, site_title="the full-stack example (examples/fullstack)",
            program_file="supervisor/conf.d-fullstack/mysite.conf",
            guide="docs/deploy-on-a-vps.md")),
    }
    # The Celery programs of the full-stack example (issue 15): rendered once that file is in.
    celery = "supervisor/conf.d-fullstack/celery.conf"
    if (ROOT / celery).exists():
        out[celery] = render_template("celery.conf", dict(
            context(CELERY, **REPO_TEXT), example=True, celery_program="celery",
            beat_program="celerybeat", workers='["celery", "celerybeat"]'))
    for colour in ("blue", "green"):
        ctx = program_context(BLUEGREEN, dict(bluegreen, example=True,
                                              nginx_file="examples/nginx/mysite.conf"), colour)
        out[f"supervisor/conf.d-bluegreen/mysite_{colour}.conf"] = render_template(
            "program.conf", ctx)
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = 0
    for rel, text in rendered().items():
        path = ROOT / rel
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == text:
            continue
        stale += 1
        if check:
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                f"{rel} (checked in)", f"{rel} (from the templates)"))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {rel}")
    if check and stale:
        print(f"{stale} file(s) differ from watcher/init/templates: edit the template, then "
              "`make shipped`", file=sys.stderr)
    return 1 if check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
