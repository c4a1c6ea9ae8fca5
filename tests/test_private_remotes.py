"""Private remotes for real: a deploy key against a real sshd on loopback, and an access token
against `git http-backend` behind a server that demands it. Nothing ever prompts, and no
key or token reaches a log, the state file or the report (DESIGN §4 git.*_file)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.daemon import code_change
from support.git_http import USERNAME, GitHttp
from support.site import Site
from support.sshd import KeyPair, Sshd

TOKEN = "canary-git-token-0b7f3e91"
WRONG_TOKEN = "canary-wrong-token-44c1d2"

pytestmark = pytest.mark.slow


class Remotes:
    """One site, and the same bare remote served over ssh and over http."""

    def __init__(self, site: Site, sshd: Sshd, deploy_key: KeyPair, http: GitHttp,
                 secrets: Path) -> None:
        self.site, self.sshd, self.key, self.http, self.dir = site, sshd, deploy_key, http, secrets

    def once(self, **overrides: str) -> tuple[subprocess.CompletedProcess[str], float]:
        """`watcher --once` with WATCHER_GIT_* overrides, no TTY and no stdin; and its time."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHER_", "SSH_"))}
        env.update({f"WATCHER_GIT_{k.upper()}": v for k, v in overrides.items()})
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "watcher", "--once", "--config", str(self.site.config)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300,
            start_new_session=True, check=False)  # no controlling terminal to prompt on
        return result, time.monotonic() - started

    def ssh(self, known_hosts: Path | None, key: KeyPair | None = None
            ) -> tuple[subprocess.CompletedProcess[str], float]:
        overrides = {"remote": self.sshd.url(self.site.remote),
                     "ssh_key_file": str((key or self.key).private)}
        if known_hosts is not None:
            overrides["known_hosts_file"] = str(known_hosts)
        return self.once(**overrides)

    def known_hosts(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text)
        return path

    def everything_written(self) -> str:
        """What watcher wrote where others can read it: state.json and the reports sent."""
        state = (self.site.root / ".watcher" / "state.json").read_text()
        reports = [r.body.decode(errors="replace") for r in self.site.api.requests]
        return state + "\n".join(reports)


@pytest.fixture(scope="module")
def remotes(site_factory: Callable[..., Site],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remotes]:
    secrets = tmp_path_factory.mktemp("private")
    site = site_factory()
    key = KeyPair.make(secrets / "deploy_key", "deploy@watcher")
    with Sshd(secrets / "sshd", authorized=[key.public]) as sshd, \
            GitHttp(site.remote.parent, TOKEN) as http:
        yield Remotes(site, sshd, key, http, secrets)


def assert_no_key(remotes: Remotes, *outputs: str) -> None:
    key_text = remotes.key.private.read_text()
    body = "".join(line for line in key_text.splitlines() if "PRIVATE KEY" not in line)
    for text in (*outputs, remotes.everything_written()):
        assert str(remotes.key.private) not in text
        assert body[:40] not in text and body[-40:] not in text


def assert_no_token(*outputs: str) -> None:
    for token in (TOKEN, WRONG_TOKEN):
        basic = base64.b64encode(f"{USERNAME}:{token}".encode()).decode()
        for text in outputs:
            assert token not in text
            assert basic not in text


def error_of(result: subprocess.CompletedProcess[str]) -> str:
    errors = [json.loads(line) for line in result.stderr.splitlines()
              if line.startswith("{") and '"watcher.error"' in line]
    assert errors, result.stderr[-2000:]
    return str(errors[-1]["error"])


def test_ssh_deploy_key_and_known_hosts_deploy(remotes: Remotes) -> None:
    """`--once` over ssh with git.ssh_key_file and git.known_hosts_file deploys the head."""
    known = remotes.known_hosts("known_hosts", remotes.sshd.known_hosts_line())
    result, _ = remotes.ssh(known)
    assert result.returncode == 0, result.stderr[-3000:]
    assert remotes.site.served_revision() == remotes.site.head()
    assert "Accepted publickey for" in remotes.sshd.log()
    assert_no_key(remotes, result.stdout, result.stderr)


def test_ssh_changed_host_key_fails_at_once(remotes: Remotes) -> None:
    """A known_hosts entry with a different host key fails with exit 3, fast, no prompt."""
    other = KeyPair.make(remotes.dir / "impostor_host_key", "impostor")
    kind, blob = other.public.split()[:2]
    known = remotes.known_hosts("known_hosts_changed",
                                f"[127.0.0.1]:{remotes.sshd.port} {kind} {blob}\n")
    live = remotes.site.live_release() if (remotes.site.root / "current").exists() else None
    result, took = remotes.ssh(known)
    assert result.returncode == 3, result.stderr[-3000:]
    assert took < 20
    assert "Host key verification failed" in error_of(result)
    assert "yes/no" not in result.stderr + result.stdout
    if live is not None:
        assert remotes.site.live_release() == live
    assert_no_key(remotes, result.stdout, result.stderr)


def test_ssh_unknown_host_fails_without_prompting(remotes: Remotes) -> None:
    """A known_hosts file without the server (strict checking), or no known_hosts_file at
    all (BatchMode), fails with exit 3 instead of asking whether to trust the host."""
    empty = remotes.known_hosts("known_hosts_empty", "")
    for known in (empty, None):
        result, took = remotes.ssh(known)
        assert result.returncode == 3, result.stderr[-3000:]
        assert took < 20
        assert "Host key verification failed" in error_of(result)
        assert "yes/no" not in result.stderr + result.stdout
        assert_no_key(remotes, result.stdout, result.stderr)
    assert empty.read_text() == ""  # nothing was trusted on first use


def test_ssh_key_not_authorised_fails(remotes: Remotes) -> None:
    """A deploy key the server does not accept fails with exit 3 and no password prompt."""
    stranger = KeyPair.make(remotes.dir / "stranger_key", "stranger")
    known = remotes.known_hosts("known_hosts", remotes.sshd.known_hosts_line())
    result, took = remotes.ssh(known, key=stranger)
    assert result.returncode == 3, result.stderr[-3000:]
    assert took < 20
    assert "Permission denied (publickey)" in error_of(result)
    assert str(stranger.private) not in result.stderr + result.stdout


def test_http_token_file_deploys(remotes: Remotes) -> None:
    """`--once` against an http remote that demands a token deploys with git.token_file, and
    the token is in no log line, state.json, report, nor any process's argv."""
    token_file = remotes.dir / "git.token"
    token_file.write_text(TOKEN + "\n")
    sha = code_change(remotes.site, "over-http")
    before = len(remotes.http.seen)
    result, _ = remotes.once(remote=remotes.http.url("remote.git"), token_file=str(token_file))
    assert result.returncode == 0, result.stderr[-3000:]
    assert remotes.site.served_revision() == sha
    served = [s for s in remotes.http.seen[before:] if s[2] == 200]
    assert any("git-upload-pack" in path for _, path, _ in served)  # ls-remote and fetch
    assert all(status == 200 for _, _, status in remotes.http.seen[before:])
    assert remotes.http.argv_leaks == []
    assert_no_token(result.stdout, result.stderr, remotes.everything_written())


def test_http_wrong_or_missing_token_fails_without_prompt(remotes: Remotes) -> None:
    """A wrong token, or none, is refused by the server: exit 3, fast, no username prompt,
    and neither token in the output or the error message."""
    wrong = remotes.dir / "wrong.token"
    wrong.write_text(WRONG_TOKEN + "\n")
    for token_file in (str(wrong), ""):
        before = len(remotes.http.seen)
        result, took = remotes.once(remote=remotes.http.url("remote.git"),
                                    token_file=token_file)
        assert result.returncode == 3, result.stderr[-3000:]
        assert took < 20
        assert [s[2] for s in remotes.http.seen[before:]][:1] == [401]
        message = error_of(result)
        assert "ls-remote" in message
        assert "Username" not in result.stdout
        assert_no_token(result.stdout, result.stderr, message, remotes.everything_written())


def test_http_token_is_not_sent_to_another_host_on_redirect(remotes: Remotes) -> None:
    """A remote that redirects to another host (here: another port) gets the token, the
    other host does not; the check fails with exit 3 instead of authenticating there."""
    token_file = remotes.dir / "git.token"
    token_file.write_text(TOKEN + "\n")
    with GitHttp(remotes.site.remote.parent, TOKEN) as other, \
            GitHttp(remotes.site.remote.parent, TOKEN,
                    redirect_to=f"http://127.0.0.1:{other.port}") as moved:
        result, took = remotes.once(remote=moved.url("remote.git"), token_file=str(token_file))
        assert result.returncode == 3, result.stderr[-3000:]
        assert took < 20
        assert moved.token_seen >= 1 and moved.seen[0][2] == 302
        assert other.seen and other.token_seen == 0
        assert_no_token(result.stdout, result.stderr)


def test_ssh_key_readable_by_others_fails_naming_the_setting(remotes: Remotes) -> None:
    """A deploy key with mode 0644 (ssh ignores it) fails with exit 3; the error says why
    and names git.ssh_key_file rather than the key's path."""
    loose = KeyPair.make(remotes.dir / "loose_key", "loose")
    loose.private.chmod(0o644)
    with (remotes.sshd.dir / "authorized_keys").open("a") as authorized:
        authorized.write(loose.public + "\n")  # the server would take it: ssh refuses it
    known = remotes.known_hosts("known_hosts", remotes.sshd.known_hosts_line())
    result, took = remotes.ssh(known, key=loose)
    assert result.returncode == 3, result.stderr[-3000:]
    assert took < 20
    message = error_of(result)
    assert 'Load key "<git.ssh_key_file>": bad permissions' in message
    assert str(loose.private) not in result.stderr + result.stdout
