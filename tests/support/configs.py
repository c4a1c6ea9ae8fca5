"""The smallest watcher.toml that loads, for tests that exercise one section: [app], [git]
and [supervisor] pointing at nothing that exists, then the caller's TOML.

    config = minimal_config(tmp_path, '[fleet]\\nredis_url = "redis://..."\\n')

`extra` is appended after [supervisor]: its first lines may still add keys there
(`workers = [...]`) before it opens sections of its own.
"""

from __future__ import annotations

from pathlib import Path


def minimal_config(base: Path, extra: str = "", *, app: str = "mysite",
                   supervisor_url: str = "", programs: str = '["mysite"]') -> Path:
    """`base`/watcher.toml: app `app` rooted at `base`/app, a remote and a supervisord
    socket that do not exist (unless `supervisor_url` names one), then `extra`."""
    path = base / "watcher.toml"
    url = supervisor_url or f"unix://{base / 'no-supervisor.sock'}"
    path.write_text(f"""
[app]
name = "{app}"
root = "{base / 'app'}"
[git]
remote = "{base / 'nowhere.git'}"
[supervisor]
url = "{url}"
programs = {programs}
{extra}""")
    return path
