"""Config parsing: durations, types, env overrides, sections, and errors through the real CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import run_cli

from watcher.config import Config, parse_duration
from watcher.config_load import build, config_path, load
from watcher.errors import ConfigError

MINIMAL: dict[str, dict[str, Any]] = {
    "app": {"name": "mysite", "root": "/srv/mysite"},
    "git": {"remote": "git@github.com:acme/mysite.git"},
    "supervisor": {"programs": ["mysite"]},
}


def cfg(env: dict[str, str] | None = None, **sections: dict[str, Any]) -> Config:
    """MINIMAL with `sections` merged in (`notify__email` for [notify.email]), checked."""
    raw = copy.deepcopy(MINIMAL)
    for name, table in sections.items():
        raw.setdefault(name.replace("__", "."), {}).update(table)
    return build(raw, Path("/etc/watcher/t.toml"), env or {})


def error_of(env: dict[str, str] | None = None, **sections: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        cfg(env, **sections)
    assert info.value.exit_code == 2
    return str(info.value)


# -- durations ----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25), ("1.5s", 1.5),
    ("10", 10.0), (" 2m ", 120.0), (12, 12.0), (0.5, 0.5), (0, 0.0),
])
def test_durations(text: object, seconds: float) -> None:
    """Durations are "90s", "5m", "1h", "250ms" or a number of seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["abc", "5d", "", "-5s", -1, True, "1.5.2", "5 minutes", None,
                                  float("nan"), float("inf")])
def test_bad_durations(text: object) -> None:
    """Anything else is refused with ValueError (negative numbers and booleans included)."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_duration_keys_are_converted() -> None:
    """Duration keys of every section become float seconds."""
    c = cfg(git={"interval": "5m", "timeout": 20}, health={"timeout": "45s"},
            report={"budget": "250ms"}, build={"timeout": "1h"})
    assert (c.git.interval, c.git.timeout, c.health.timeout) == (300.0, 20.0, 45.0)
    assert (c.report.budget, c.build.timeout) == (0.25, 3600.0)


def test_bad_duration_names_key_and_file() -> None:
    """A bad duration names the key and the config file."""
    msg = error_of(health={"timeout": "soon"})
    assert "/etc/watcher/t.toml" in msg and "health.timeout" in msg


@pytest.mark.parametrize("key", ["timeout", "interval"])
def test_zero_durations_are_refused(key: str) -> None:
    """A zero timeout or interval would fail or spin every call: refused, naming the key."""
    msg = error_of(git={key: "0s"})
    assert f"git.{key}" in msg and "more than 0" in msg


def test_warm_gate_takes_zero_to_turn_it_off() -> None:
    """django.warm_gate is 30 minutes by default, 0 turns it off (the one duration that
    may be 0), and a negative or non-duration value is refused, naming the key."""
    assert cfg().django.warm_gate == 1800.0
    assert cfg(django={"warm_gate": "0"}).django.warm_gate == 0.0
    assert cfg(django={"warm_gate": "5m"}).django.warm_gate == 300.0
    assert "django.warm_gate" in error_of(django={"warm_gate": "-1s"})
    assert "django.warm_gate" in error_of(django={"warm_gate": "soon"})


def test_empty_requirements_refused() -> None:
    """build.requirements = [] would make every pip install fail: refused at start."""
    assert "build.requirements" in error_of(build={"requirements": []})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_toml_nan_and_inf_are_not_durations(tmp_path: Path, value: str) -> None:
    """TOML's nan and inf are refused as durations (a poll loop cannot sleep nan seconds)."""
    path = tmp_path / "w.toml"
    path.write_text('[app]\nname = "m"\nroot = "/srv/m"\n[supervisor]\nprograms = ["m"]\n'
                    f'[git]\nremote = "/srv/r.git"\ninterval = {value}\n')
    with pytest.raises(ConfigError, match=rf"{path}: git\.interval"):
        load(path, environ={})


# -- types, required keys, sections -------------------------------------------------------
def test_defaults() -> None:
    """A minimal config gets the documented defaults and no optional sections."""
    c = cfg()
    assert (c.git.branch, c.app.keep_releases, c.django.migrate) == ("main", 5, "auto")
    assert c.build.requirements == ("requirements.txt",)
    assert c.bluegreen is None and c.email is None
    assert c.state_dir == Path("/srv/mysite/.watcher")


@pytest.mark.parametrize(("sections", "needle"), [
    ({"app": {"colour": "blue"}}, "unknown key app.colour"),
    ({"app": {"keep_releases": "five"}}, "app.keep_releases"),
    ({"app": {"keep_releases": True}}, "app.keep_releases"),
    ({"git": {"branch": 3}}, "git.branch"),
    ({"build": {"pip_args": "--no-index"}}, "build.pip_args"),
    ({"django": {"check_deploy": "yes"}}, "django.check_deploy"),
    ({"django": {"migrate": "sometimes"}}, "django.migrate must be one of auto, always, never"),
    ({"supervisor": {"reload": "graceful"}}, "supervisor.reload"),
    ({"report": {"format": "xml"}}, "report.format"),
    ({"app": {"keep_releases": 1}}, "app.keep_releases"),
    ({"app": {"root": "srv/mysite"}}, "app.root"),
    ({"build": {"requirements": ["../requirements.txt"]}}, "inside the release"),
    ({"supervisor": {"url": "tcp://127.0.0.1:9001"}}, "supervisor.url"),
    ({"supervisor": {"programs": []}}, "supervisor.programs"),
    ({"hooks": {"pre_switch": [""]}}, "hooks.pre_switch"),
])
def test_bad_values_name_key_and_file(sections: dict[str, dict[str, Any]], needle: str) -> None:
    """An unknown key, a wrong type, a bad choice or an impossible value is a config error
    naming the key and the file."""
    msg = error_of(**sections)
    assert needle in msg
    assert "/etc/watcher/t.toml" in msg


@pytest.mark.parametrize(("section", "key"), [("app", "root"), ("app", "name"),
                                              ("git", "remote")])
def test_missing_required_key(section: str, key: str) -> None:
    """A missing required key is named with its section and the file."""
    raw = copy.deepcopy(MINIMAL)
    del raw[section][key]
    with pytest.raises(ConfigError, match=rf"t\.toml: missing required key {section}\.{key}"):
        build(raw, Path("t.toml"), {})


def test_unknown_section(tmp_path: Path) -> None:
    """A table watcher does not know is an error naming it and the file, not ignored."""
    path = tmp_path / "w.toml"
    path.write_text('[app]\nname = "m"\nroot = "/srv/m"\n[git]\nremote = "/srv/r.git"\n'
                    '[supervisor]\nprograms = ["m"]\n[deploy]\nx = 1\n')
    with pytest.raises(ConfigError, match=rf"{path}: unknown section \[deploy\]"):
        load(path, environ={})


def test_hooks_accept_strings_and_argv_lists() -> None:
    """Hook strings are split like a shell would (no shell runs); argv lists stay as given."""
    c = cfg(hooks={"pre_switch": ["python manage.py warm --site 'a b'", ["echo", "x y"]]})
    assert c.hooks.pre_switch == (("python", "manage.py", "warm", "--site", "a b"),
                                  ("echo", "x y"))


# -- optional sections --------------------------------------------------------------------
def test_notify_email_section() -> None:
    """[notify.email] becomes `email`, with the failing outcomes notified by default."""
    c = cfg(notify__email={"smtp_url": "smtp://mail.example.com:587",
                           "to": ["ops@example.com"], "password_file": "/etc/w/smtp"})
    assert c.email is not None
    assert c.email.smtp_url == "smtp://mail.example.com:587"
    assert c.email.to == ("ops@example.com",)
    assert c.email.on == ("failed", "rolled_back", "rollback_failed")
    assert "notify.email.too" in error_of(notify__email={"too": ["x@example.com"]})


def test_notify_email_read_from_a_toml_file(tmp_path: Path) -> None:
    """The dotted TOML table `[notify.email]` is read from a real file."""
    path = tmp_path / "w.toml"
    path.write_text('[app]\nname = "m"\nroot = "/srv/m"\n[git]\nremote = "/srv/r.git"\n'
                    '[supervisor]\nprograms = ["m"]\n[notify.email]\nto = ["a@example.com"]\n')
    c = load(path, environ={})
    assert c.email is not None and c.email.to == ("a@example.com",)
    assert c.path == path


def test_empty_bluegreen_means_off() -> None:
    """An empty [bluegreen] section turns blue/green off instead of failing."""
    assert cfg(bluegreen={}).bluegreen is None


def test_bluegreen_needs_two_programs_and_urls() -> None:
    """A half-filled [bluegreen] and reload = "bluegreen" without it are errors."""
    assert "bluegreen" in error_of(bluegreen={"programs": ["a", "b"]})
    assert "bluegreen" in error_of(supervisor={"reload": "bluegreen"})
    c = cfg(bluegreen={"programs": ["b", "g"], "health_urls": ["http://x/h", "http://y/h"]},
            supervisor={"programs": []})
    assert c.bluegreen is not None and c.bluegreen.programs == ("b", "g")


# -- env overrides ------------------------------------------------------------------------
def test_env_overrides_scalars() -> None:
    """WATCHER_<SECTION>_<KEY> overrides the file, converted by the key's type."""
    c = cfg({"WATCHER_GIT_BRANCH": "prod", "WATCHER_APP_KEEP_RELEASES": "7",
             "WATCHER_DJANGO_CHECK_DEPLOY": "yes", "WATCHER_HEALTH_EXPECT_REVISION": "off",
             "WATCHER_GIT_INTERVAL": "2m", "WATCHER_HEALTH_URL": "http://127.0.0.1:1/h"},
            git={"branch": "main"})
    assert (c.git.branch, c.app.keep_releases, c.git.interval) == ("prod", 7, 120.0)
    assert c.django.check_deploy is True
    assert c.health.expect_revision is False
    assert c.health.url == "http://127.0.0.1:1/h"


@pytest.mark.parametrize(("value", "expected"), [
    ('["--no-index", "--find-links", "/srv/wheels"]', ("--no-index", "--find-links",
                                                       "/srv/wheels")),
    ("--no-index, --find-links,/srv/wheels", ("--no-index", "--find-links", "/srv/wheels")),
    ("", ()),
])
def test_env_override_lists(value: str, expected: tuple[str, ...]) -> None:
    """A list key takes a JSON list or comma-separated words from the environment."""
    assert cfg({"WATCHER_BUILD_PIP_ARGS": value}).build.pip_args == expected


def test_env_override_hooks_and_nested_section() -> None:
    """Hooks take a JSON list of commands; WATCHER_NOTIFY_EMAIL_* fills [notify.email]."""
    c = cfg({"WATCHER_HOOKS_POST_SWITCH": json.dumps(["echo done", ["true"]]),
             "WATCHER_HOOKS_PRE_SWITCH": "python manage.py warm",
             "WATCHER_NOTIFY_EMAIL_TO": "a@example.com,b@example.com"})
    assert c.hooks.post_switch == (("echo", "done"), ("true",))
    assert c.hooks.pre_switch == (("python", "manage.py", "warm"),)
    assert c.email is not None and c.email.to == ("a@example.com", "b@example.com")


@pytest.mark.parametrize(("env", "needles"), [
    ({"WATCHER_GIT_INTERVAL": "abc"}, ("git.interval", "WATCHER_GIT_INTERVAL")),
    ({"WATCHER_DJANGO_CHECK_DEPLOY": "maybe"}, ("django.check_deploy",)),
    ({"WATCHER_APP_KEEP_RELEASES": "x"}, ("app.keep_releases",)),
    ({"WATCHER_DJANGO_MIGRATE": "sometimes"}, ("django.migrate",)),
    ({"WATCHER_GIT_NOPE": "1"}, ("WATCHER_GIT_NOPE",)),
    ({"WATCHER_BUILD_PIP_ARGS": "[not json"}, ("build.pip_args",)),
])
def test_bad_env_overrides(env: dict[str, str], needles: tuple[str, ...]) -> None:
    """A bad or unknown override is a config error naming the key (or variable) and file."""
    msg = error_of(env)
    assert "/etc/watcher/t.toml" in msg
    for needle in needles:
        assert needle in msg


def test_unrelated_watcher_variables_are_left_alone() -> None:
    """WATCHER_CONFIG and WATCHER_* naming no section (another tool's) are not config keys."""
    c = cfg({"WATCHER_CONFIG": "/x.toml", "WATCHER_TEST_WHEELHOUSE": "/w"})
    assert c.git.branch == "main"


def test_config_path_order() -> None:
    """--config wins over $WATCHER_CONFIG, which wins over /etc/watcher/watcher.toml."""
    env = {"WATCHER_CONFIG": "/from/env.toml"}
    assert config_path("/from/cli.toml", env) == Path("/from/cli.toml")
    assert config_path(None, env) == Path("/from/env.toml")
    assert config_path(None, {}) == Path("/etc/watcher/watcher.toml")


# -- credentials in the remote ------------------------------------------------------------
@pytest.mark.parametrize("remote", [
    "https://bob:hunter2-canary@github.com/acme/mysite.git",
    "https://ghp_canary0token0value@github.com/acme/mysite.git",
    "http://x-access-token:hunter2-canary@git.example.com/acme/mysite.git",
])
def test_credentials_in_https_remote_rejected_without_echo(remote: str) -> None:
    """A token or password in an https remote is refused, and the message does not repeat it."""
    msg = error_of(git={"remote": remote})
    assert "git.remote" in msg and "token_file" in msg
    for secret in ("hunter2-canary", "ghp_canary0token0value", "bob"):
        assert secret not in msg


@pytest.mark.parametrize("remote", [
    "git@github.com:acme/mysite.git", "ssh://git@github.com/acme/mysite.git",
    "https://github.com/acme/mysite.git", "/srv/git/mysite.git",
])
def test_remotes_without_credentials_accepted(remote: str) -> None:
    """ssh remotes (with their `git@` user), plain https and local paths are fine."""
    assert cfg(git={"remote": remote}).git.remote == remote


# -- the real CLI -------------------------------------------------------------------------
BASE_TOML = """\
[app]
name = "mysite"
root = "{root}"

[git]
remote = "/nonexistent/remote.git"
interval = "10s"

[supervisor]
programs = ["mysite"]
"""


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "watcher.toml"
    path.write_text(BASE_TOML.format(root=tmp_path / "app"))
    return path


CLI_CASES: list[tuple[str, tuple[str, str], dict[str, str], str]] = [
    # id, (replace this, with that) in the file, env, key the message must name
    ("unknown key", ('name = "mysite"', 'name = "mysite"\ncolour = "blue"'), {}, "app.colour"),
    ("wrong type", ('name = "mysite"', 'name = "mysite"\nkeep_releases = "five"'), {},
     "app.keep_releases"),
    ("missing app.root", ("root =", "# root ="), {}, "app.root"),
    ("missing git.remote", ("remote =", "# remote ="), {}, "git.remote"),
    ("bad duration", ('interval = "10s"', 'interval = "soon"'), {}, "git.interval"),
    ("bad choice", ("[supervisor]", '[django]\nmigrate = "sometimes"\n\n[supervisor]'), {},
     "django.migrate"),
    ("env bad duration", ("", ""), {"WATCHER_GIT_INTERVAL": "abc"}, "WATCHER_GIT_INTERVAL"),
    ("env unknown key", ("", ""), {"WATCHER_GIT_NOPE": "1"}, "WATCHER_GIT_NOPE"),
    ("not TOML", ("[supervisor]", "[supervisor"), {}, "not valid TOML"),
]


@pytest.mark.parametrize(("edit", "env", "key"), [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])
def test_cli_config_errors_exit_2(toml: Path, edit: tuple[str, str], env: dict[str, str],
                                  key: str) -> None:
    """`watcher --once` with a bad config exits 2 with one line naming the key and the file,
    and no traceback."""
    text = toml.read_text()
    if edit[0]:
        assert edit[0] in text
        toml.write_text(text.replace(edit[0], edit[1], 1))
    res = run_cli("--once", "--config", str(toml), env=env)
    assert res.returncode == 2, res.stderr
    assert key in res.stderr and str(toml) in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("watcher: config error: ")


def test_cli_missing_config_file(tmp_path: Path) -> None:
    """A config file that does not exist exits 2 naming it, without a traceback."""
    missing = tmp_path / "nope.toml"
    res = run_cli("--once", "--config", str(missing))
    assert res.returncode == 2
    assert f"config file not found: {missing}" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_credentials_in_remote_not_echoed(toml: Path) -> None:
    """The CLI refuses a remote with a password and prints no part of it."""
    toml.write_text(toml.read_text().replace(
        '"/nonexistent/remote.git"', '"https://bob:hunter2-canary@github.com/acme/x.git"'))
    res = run_cli("--once", "--config", str(toml))
    assert res.returncode == 2
    assert "git.remote" in res.stderr
    assert "hunter2-canary" not in res.stderr + res.stdout


@pytest.mark.parametrize("argv", [
    ("--config", "{config}", "status"),
    ("status", "--config", "{config}"),
    ("status", "--json", "--config", "{config}"),
    ("--config", "{config}", "history", "-n", "2"),
])
def test_config_before_or_after_the_command(toml: Path, argv: tuple[str, ...]) -> None:
    """`--config` is accepted before and after the command."""
    res = run_cli(*(a.format(config=toml) for a in argv))
    assert res.returncode == 0, res.stderr
    if "--json" in argv:
        assert json.loads(res.stdout)["live"] is None
    elif "status" in argv:
        assert "nothing deployed" in res.stdout


def test_config_from_environment_variable(toml: Path) -> None:
    """Without --config, $WATCHER_CONFIG names the file."""
    res = run_cli("status", "--json", env={"WATCHER_CONFIG": str(toml)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["app"] == "mysite"


def test_check_names_each_unreachable_part(toml: Path, tmp_path: Path) -> None:
    """`watcher check` with no remote and no supervisord prints a FAIL line for each and
    exits 3 (transient), and says the app root is still to be created."""
    toml.write_text(toml.read_text().replace(
        "[supervisor]", f'[supervisor]\nurl = "unix://{tmp_path}/none.sock"'))
    res = run_cli("check", "--config", str(toml))
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"ok    config: {toml}" in res.stdout
    assert "FAIL  remote: git ls-remote /nonexistent/remote.git failed" in res.stdout
    assert "FAIL  supervisord: " in res.stdout
    assert f"warn  app root: {tmp_path / 'app'} does not exist yet" in res.stdout
    assert "Traceback" not in res.stderr


# -- issue 12: installer, pip_args under uv, bluegreen.settle -----------------------------
def test_installer_defaults_to_uv_and_pip_args_uv_rejects_are_named() -> None:
    """build.installer is uv unless set; a pip_args entry `uv pip install` does not take is
    a config error naming it (and how out), fine with installer = "pip"."""
    assert cfg().build.installer == "uv"
    msg = error_of(build={"pip_args": ["--no-index", "--prefer-binary"]})
    assert "'--prefer-binary'" in msg and "build.pip_args" in msg and "pip" in msg
    assert cfg(build={"installer": "pip", "pip_args": ["--prefer-binary"]}).build.installer == (
        "pip")
    assert "build.installer" in error_of(build={"installer": "conda"})


def test_bluegreen_settle_floor_comes_from_nginx_fail_timeout() -> None:
    """bluegreen.settle defaults to 2.5 s and must exceed the shipped Nginx fail_timeout (1s)
    + 1 s; ready_url is optional."""
    bg = {"programs": ["b", "g"], "health_urls": ["http://x/h", "http://y/h"]}
    c = cfg(bluegreen=bg, supervisor={"programs": []})
    assert c.bluegreen is not None and c.bluegreen.settle == 2.5 and c.bluegreen.ready_url == ""
    assert "bluegreen.settle" in error_of(bluegreen={**bg, "settle": "2s"})
    c = cfg(bluegreen={**bg, "settle": "3s", "ready_url": "http://127.0.0.1/healthz"})
    assert c.bluegreen is not None and c.bluegreen.settle == 3.0
