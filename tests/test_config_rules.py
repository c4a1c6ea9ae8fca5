"""Bad values are config errors at load (exit 2, naming the key and the file), never a
crash later or a failure after the switch; cleartext credentials are refused or warned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.configs import minimal_config
from support.fixtures import run_cli
from test_config import cfg, error_of

WHERE = "/etc/watcher/t.toml"
BG = {"programs": ["b", "g"], "health_urls": ["http://127.0.0.1:1/", "http://127.0.0.1:2/"]}


@pytest.mark.parametrize(("sections", "key"), [
    ({"supervisor": {"url": "https://127.0.0.1:9001/RPC2"}}, "supervisor.url"),
    ({"supervisor": {"url": "http://admin:canary-pw@127.0.0.1:9001"}}, "supervisor.url"),
    ({"supervisor": {"url": "unix://relative.sock"}}, "supervisor.url"),
    ({"supervisor": {"url": "http://127.0.0.1:99999"}}, "supervisor.url"),
    ({"git": {"interval": 1e10}}, "git.interval"),
    ({"git": {"timeout": "9999h"}}, "git.timeout"),
    ({"build": {"shared": ["."]}}, "build.shared"),
    ({"build": {"shared": [""]}}, "build.shared"),
    ({"build": {"shared": ["./"]}}, "build.shared"),
    ({"build": {"shared": ["REVISION"]}}, "build.shared"),
    ({"build": {"shared": [".venv/lib"]}}, "build.shared"),
    ({"django": {"manage": ""}}, "django.manage"),
    ({"build": {"python": ""}}, "build.python"),
    ({"build": {"python": "  "}}, "build.python"),
    ({"health": {"url": "not a url"}}, "health.url"),
    ({"health": {"url": "ftp://127.0.0.1/x"}}, "health.url"),
    ({"report": {"url": "logs.example.com/ingest"}}, "report.url"),
    ({"bluegreen": {"programs": ["b", "g"], "health_urls": ["http://127.0.0.1:1/", "x"]}},
     "bluegreen.health_urls"),
    ({"bluegreen": {**BG, "sockets": ["/srv/s/run/blue.sock", "/srv/s/run/green.sock"]}},
     "bluegreen.publish"),
    ({"bluegreen": {**BG, "publish": "/srv/s/run/live.sock"}}, "bluegreen.sockets"),
    ({"bluegreen": {**BG, "sockets": ["run/blue.sock", "/srv/s/run/green.sock"],
                    "publish": "/srv/s/run/live.sock"}}, "bluegreen.sockets"),
    ({"bluegreen": {**BG, "sockets": ["/srv/s/run/blue.sock", "/srv/s/run/green.sock"],
                    "publish": "/srv/s/run/blue.sock"}}, "bluegreen.publish"),
    ({"bluegreen": {**BG, "sockets": ["/srv/s/run/blue.sock", "/srv/s/run/green.sock"],
                    "publish": "/srv/" + "s" * 120 + "/live.sock"}}, "bluegreen.publish"),
    ({"git": {"branch": " "}}, "git.branch"),
    ({"git": {"branch": "main branch"}}, "git.branch"),
    ({"git": {"branch": "-main"}}, "git.branch"),
    ({"git": {"remote": "ssh://deploy:canary-pw@git.example.com/acme/site.git"}},
     "git.remote"),
    ({"webhook": {"listen": "127.0.0.1:70000"}}, "webhook.listen"),
    ({"webhook": {"listen": "9090"}}, "webhook.listen"),
])
def test_bad_values_are_config_errors_naming_key_and_file(sections: dict[str, Any],
                                                          key: str) -> None:
    """Each value the review found accepted (or crashing later) is refused at load with
    exit code 2, naming the key and the file, and never echoing a password."""
    msg = error_of(**sections)
    assert key in msg and WHERE in msg
    assert "canary-pw" not in msg


@pytest.mark.parametrize("sections", [
    {"supervisor": {"url": "http://127.0.0.1:9001"}},
    {"supervisor": {"url": "unix:///run/supervisor.sock"}},
    {"git": {"interval": "1h", "branch": "release/2.x"}},
    {"build": {"shared": [".env", "media", "var/media"]}},
    {"health": {"url": "https://example.com/healthz"}},
    {"webhook": {"listen": "[::1]:0"}},
    {"bluegreen": {**BG, "sockets": ["/srv/s/run/blue.sock", "/srv/s/run/green.sock"],
                   "publish": "/srv/s/run/live.sock"}},
    {"git": {"remote": "ssh://git@github.com:22/acme/site.git"}},
    {"git": {"remote": "http://127.0.0.1:8080/acme/site.git", "token_file": "/etc/t"}},
    {"git": {"remote": "https://git.example.com/acme/site.git", "token_file": "/etc/t"}},
])
def test_good_values_still_load(sections: dict[str, Any]) -> None:
    """What is fine stays fine: plain http to supervisord, nested shared paths, a token
    over https or to the loopback."""
    cfg(**sections)


def test_a_token_over_plain_http_to_another_host_is_refused() -> None:
    """An http:// remote with git.token_file would send the token in the clear: exit 2."""
    msg = error_of(git={"remote": "http://git.example.com/acme/site.git",
                        "token_file": "/etc/watcher/token"})
    assert "git.remote" in msg and "in the clear" in msg and WHERE in msg


def test_config_naming_a_directory_is_exit_2_without_a_traceback(tmp_path: Path) -> None:
    """`--config DIR` is a config error naming the path (it was a traceback)."""
    result = run_cli("check", "--config", str(tmp_path))
    assert result.returncode == 2
    assert "directory" in result.stderr and str(tmp_path) in result.stderr
    assert "Traceback" not in result.stderr


def test_https_supervisor_url_is_exit_2_before_anything_runs(tmp_path: Path) -> None:
    """`supervisor.url = "https://..."` stops `watcher --once` at load (exit 2), before any
    fetch or switch (it failed after the switch, exit 4)."""
    config = minimal_config(tmp_path, supervisor_url="https://127.0.0.1:9001")
    result = run_cli("--once", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "supervisor.url" in result.stderr and "watcher.toml" in result.stderr
    assert not (tmp_path / "app").exists()


@pytest.mark.parametrize(("url", "warned"), [
    ("http://logs.example.com/ingest", True),
    ("https://logs.example.com/ingest", False),
    ("http://127.0.0.1:9/ingest", False),
])
def test_check_warns_about_a_report_url_over_plain_http(tmp_path: Path, url: str,
                                                        warned: bool) -> None:
    """`watcher check` warns when reports (and their token) would cross the network over
    plain http; https and the loopback are quiet."""
    config = minimal_config(tmp_path, f'[report]\nurl = "{url}"\n')
    result = run_cli("check", "--config", str(config))
    assert ("warn  report url" in result.stdout) is warned, result.stdout
