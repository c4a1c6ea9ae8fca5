"""End-to-end: no secret leaks, and watcher's private files are private.

Every secret watcher knows is set to a unique canary: the webhook secret, the report token,
the supervisord password (the Site's supervisord is swapped for one on HTTP with a username
and password) and the git token (the remote stays a local path: git ignores the header, but
watcher still reads and registers the token); the health URL carries a password too. Then
the sandbox goes through deploys, a failing step whose output carries every canary, a
health-failure rollback, `watcher rollback`, status, history, check, reports spooled while
the API refuses, a wrong supervisord password and a daemon run taking webhooks; the last
tests look for the canaries in everything watcher wrote. Runtime: about 60-90 s on two
cores (one venv build dominates).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog
from support.site import TOKEN, Site, log_events, settled, tail
from support.supervisord import SupervisordProcess, free_port

from watcher import cli, commands

pytestmark = pytest.mark.slow

WEBHOOK_SECRET = "canary-webhook-secret-b81e4a"
SV_PASSWORD = "canary-supervisord-password-7c02f9"
SV_WRONG = "canary-wrong-supervisord-password-e5d113"
GIT_TOKEN = "canary-git-token-91aa3d"
HEALTH_PASSWORD = "canary-health-url-password-40c7e2"  # credentials in a URL are blanked too
GIT_BASIC = base64.b64encode(f"x-access-token:{GIT_TOKEN}".encode()).decode()
CANARIES = (WEBHOOK_SECRET, TOKEN, SV_PASSWORD, SV_WRONG, GIT_TOKEN, GIT_BASIC, HEALTH_PASSWORD)
HEALTHZ_LINE = ('return HttpResponse(f"ok {revision()}\\n", '
                'content_type="text/plain; charset=utf-8")')


@dataclass
class Lab:
    """The sandbox, its secret files, and every output watcher produced (checked at the end)."""

    site: Site
    secrets: Path
    hook_port: int
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (what, text)

    def watcher(self, *args: str) -> subprocess.CompletedProcess[str]:
        res = self.site.watcher(*args, timeout=180)
        self.outputs.append((f"watcher {' '.join(args)}", res.stdout + res.stderr))
        return res

    def deploy_head(self) -> None:
        sha = self.site.head()
        res = self.watcher("--once")
        assert res.returncode == 0, tail(res)
        assert settled(self.site, sha) == sha




def secret_file(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def leaks(text: str) -> list[str]:
    return [c for c in CANARIES if c in text]


@pytest.fixture(scope="module")
def lab(site_factory: Callable[..., Site]) -> Iterator[Lab]:
    site = site_factory(health_timeout="6s")
    secrets = site.base / "secrets"
    secrets.mkdir(mode=0o700)
    hook_port = free_port()
    # The same Gunicorn program, under a supervisord reached over HTTP with a password.
    body = (site.sv.conf_dir / "mysite.conf").read_text().split("\n", 1)[1]
    old_url = site.sv.url
    site.sv.stop()
    site.sv = SupervisordProcess(site.base / "sv-http", {"mysite": body}, http=True,
                                 username="watcher", password=SV_PASSWORD).start()
    text = site.config.read_text()
    text = text.replace(f'url = "{old_url}"', (
        f'url = "{site.sv.url}"\nusername = "watcher"\n'
        f'password_file = "{secret_file(secrets, "sv.password", SV_PASSWORD)}"'))
    text = text.replace('branch = "main"\n', (
        f'branch = "main"\ntoken_file = "{secret_file(secrets, "git.token", GIT_TOKEN)}"\n'))
    health = f'url = "http://127.0.0.1:{site.port}/healthz"'
    assert health in text
    text = text.replace(health, health.replace("//", f"//probe:{HEALTH_PASSWORD}@"))
    text += (f'\n[webhook]\nlisten = "127.0.0.1:{hook_port}"\n'
             f'secret_file = "{secret_file(secrets, "webhook.secret", WEBHOOK_SECRET)}"\n')
    site.config.write_text(text)
    assert site.sv.url.startswith("http://") and "password_file" in text
    yield Lab(site, secrets, hook_port)


# -- the runs ---------------------------------------------------------------------------------
def test_deploy_and_check_over_a_password_protected_supervisord(lab: Lab) -> None:
    """With every secret configured, the first deploy and `watcher check` work: supervisord
    is reached over HTTP with the password, the git token is read without harm."""
    lab.deploy_head()
    assert lab.site.sv.rpc().getProcessInfo("mysite")["statename"] == "RUNNING"
    res = lab.watcher("check")
    assert res.returncode == 0, tail(res)
    assert f"ok    supervisord: {lab.site.sv.url} is RUNNING" in res.stdout
    assert "ok    program mysite: RUNNING" in res.stdout


def test_secrets_in_a_failing_steps_output_are_blanked(lab: Lab) -> None:
    """A commit whose import fails with every secret in its message (say, an app echoing a
    bad `.env` line) fails at `check`; the output tail is reported, with the secrets masked."""
    site = lab.site
    views = site.read("pages/views.py")
    leak = " ".join(f"S{i}={c}" for i, c in enumerate(CANARIES)
                    if c not in (SV_WRONG, HEALTH_PASSWORD))
    site.commit({"pages/views.py": f'raise ImportError("bad .env line: {leak}")\n' + views},
                "Break the import")
    res = lab.watcher("--once")
    assert res.returncode == 1, tail(res)
    report = site.api.requests[-1].json
    assert (report["outcome"], report["error"]["step"]) == ("failed", "check")
    assert "bad .env line: S0=***" in report["error"]["output_tail"]
    assert leaks(json.dumps(report)) == []
    site.commit({"pages/views.py": views}, "Fix the import")
    lab.deploy_head()


def test_health_failure_rollback_and_rollback_by_hand(lab: Lab) -> None:
    """A health failure rolls back by itself and `watcher rollback` rolls back by hand, both
    over the password-protected supervisord; status and history read fine after."""
    site = lab.site
    good = site.head()
    views = site.read("pages/views.py")
    assert views.count(HEALTHZ_LINE) == 1
    broken = views.replace(HEALTHZ_LINE, (  # 500 only under Gunicorn: the smoke requests pass
        'if request.META.get("SERVER_SOFTWARE", "").startswith("gunicorn"):\n'
        '        return HttpResponse("broken\\n", status=500)\n    ') + HEALTHZ_LINE)
    site.commit({"pages/views.py": broken}, "Health answers 500")
    res = lab.watcher("--once")
    assert res.returncode == 1, tail(res)
    assert site.api.requests[-1].json["outcome"] == "rolled_back"
    assert settled(site, good) == good
    site.commit({"pages/views.py": views}, "Health answers 200 again")
    lab.deploy_head()
    res = lab.watcher("rollback")
    assert res.returncode == 0, tail(res)
    assert settled(site, good) == good
    for argv in (("status", "--json"), ("history", "--json"), ("status",), ("history",)):
        res = lab.watcher(*argv)
        assert res.returncode == 0, tail(res)
    assert json.loads(lab.watcher("history", "-n", "1", "--json").stdout)[0]["event"] == "rollback"


def test_reports_are_spooled_while_the_api_refuses(lab: Lab) -> None:
    """With the logging API refusing connections, a deploy's report lands in the spool."""
    site = lab.site
    site.api.refuse()
    try:
        site.commit({"pages/marker.txt": "spooled\n"}, "Marker while the API is down")
        lab.deploy_head()
    finally:
        site.api.accept()
    spooled = list((site.root / ".watcher" / "spool").glob("*.json"))
    assert len(spooled) == 1
    assert json.loads(spooled[0].read_text())["report"]["to_sha"] == site.head()


def test_a_wrong_supervisord_password_is_reported_without_it(lab: Lab) -> None:
    """A rotated-but-wrong password file makes `watcher check` fail on supervisord with 401,
    naming the key to fix, and a missing git token file fails the remote check (so it is
    really read); with the files back, the check passes."""
    password = lab.secrets / "sv.password"
    password.write_text(SV_WRONG + "\n")
    try:
        res = lab.watcher("check")
    finally:
        password.write_text(SV_PASSWORD + "\n")
    assert res.returncode != 0, tail(res)
    assert "FAIL  supervisord" in res.stdout
    assert "HTTP 401" in res.stdout and "supervisor.password_file" in res.stdout
    assert lab.watcher("check").returncode == 0
    token = lab.secrets / "git.token"
    token.rename(lab.secrets / "git.token.moved")
    try:  # shows the token file is really read, though git ignores it for a local remote
        res = lab.watcher("check")
    finally:
        (lab.secrets / "git.token.moved").rename(token)
    assert "FAIL  remote: git.token_file: cannot read" in res.stdout, tail(res)


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                       **headers})
        return conn.getresponse().status
    finally:
        conn.close()


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the daemon exited"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the daemon's listener did not come up")


def test_daemon_takes_signed_webhooks_and_refuses_bad_ones(lab: Lab) -> None:
    """`watcher run` answers 202 to correctly signed GitHub, GitLab and generic pushes and 401
    to wrong ones, deploys the new head, sends the spooled report and stops on SIGTERM."""
    site = lab.site
    spool = site.root / ".watcher" / "spool"
    spooled_id = json.loads(next(spool.glob("*.json")).read_text())["report"]["id"]
    head = site.commit({"pages/marker.txt": "daemon\n"}, "Marker for the daemon")
    log_path = site.base / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(site.config)],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_listening(lab.hook_port, proc)
        body = json.dumps({"ref": "refs/heads/main", "after": head}).encode()
        good = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        bad = "sha256=" + hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
        gitlab = json.dumps({"object_kind": "push", "ref": "refs/heads/main"}).encode()
        cases = [
            ("/hooks/github", body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": good}, 202),
            ("/hooks/github", body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": bad}, 401),
            ("/hooks/github", body, {"X-GitHub-Event": "push"}, 401),
            ("/hooks/gitlab", gitlab, {"X-Gitlab-Token": WEBHOOK_SECRET}, 202),
            ("/hooks/gitlab", gitlab, {"X-Gitlab-Token": WEBHOOK_SECRET[:-1]}, 401),
            ("/hooks/generic", body, {"X-Signature": good}, 202),
            ("/hooks/generic", body, {"X-Signature": good[:-2]}, 401),
        ]
        got = [(path, _post(lab.hook_port, path, data, headers))
               for path, data, headers, _ in cases]
        assert got == [(path, status) for path, _, _, status in cases]
        assert settled(site, head, timeout=120) == head
        deadline = time.monotonic() + 30
        while spooled_id not in site.api.delivered_ids() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert spooled_id in site.api.delivered_ids()
        trig = lab.watcher("trigger")
        assert trig.returncode == 0, tail(trig)
        for path in ("/healthz", "/metrics"):
            conn = http.client.HTTPConnection("127.0.0.1", lab.hook_port, timeout=10)
            conn.request("GET", path)
            resp = conn.getresponse()
            lab.outputs.append((f"GET {path}", resp.read().decode()))
            conn.close()
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    lab.outputs.append(("watcher run", text))
    assert proc.returncode == 0, text[-3000:]
    seen = [(e.get("event"), e.get("forge")) for e in log_events(text)
            if str(e.get("event")).startswith("webhook.")]
    assert seen.count(("webhook.accepted", "trigger")) == 1
    assert sum(1 for event, _ in seen if event == "webhook.accepted") == 4
    assert sum(1 for event, _ in seen if event == "webhook.rejected") == 4


# -- the verdicts -----------------------------------------------------------------------------
def test_private_files_are_not_readable_by_others(lab: Lab) -> None:
    """`.watcher/` and the spool are 0700; state.json, the lock, the trigger key and spooled
    reports are 0600."""
    site = lab.site
    state_dir = site.root / ".watcher"
    site.api.refuse()
    try:  # one more spooled report, so the spool holds a file to look at
        site.commit({"pages/marker.txt": "modes\n"}, "Marker for the modes")
        lab.deploy_head()
    finally:
        site.api.accept()
    spooled = list((state_dir / "spool").glob("*.json"))
    assert spooled
    modes = {p.name: stat.S_IMODE(p.stat().st_mode)
             for p in (state_dir, state_dir / "spool")}
    assert modes == {".watcher": 0o700, "spool": 0o700}
    files = [state_dir / "state.json", state_dir / "lock", state_dir / "trigger.key", *spooled]
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        str(p): oct(0o600) for p in files}
    # uv's package cache (public wheels, hard-linked into the venvs) keeps uv's own modes;
    # .watcher/ itself is 0700, so nothing under it is reachable by others.
    assert [str(p) for p in state_dir.rglob("*") if p.is_file()
            and "cache" not in p.relative_to(state_dir).parts[:1]
            and stat.S_IMODE(p.stat().st_mode) & 0o077] == []


def test_no_secret_in_any_output_report_state_or_spool(lab: Lab) -> None:
    """No canary appears in any command's output or the daemon's log, in any report body (the
    report token travels only in the Authorization header), in state.json or in any file
    under `.watcher/` (spool included)."""
    site = lab.site
    assert len(lab.outputs) >= 15
    assert [(what, leaks(text)) for what, text in lab.outputs if leaks(text)] == []
    requests = site.api.requests
    assert len(requests) >= 6
    assert [r.body[:200] for r in requests if leaks(r.body.decode())] == []
    assert {r.headers.get("authorization") for r in requests} == {f"Bearer {TOKEN}"}
    assert leaks((site.root / ".watcher" / "state.json").read_text()) == []
    files = [p for p in (site.root / ".watcher").rglob("*") if p.is_file()]
    assert [p for p in files if p.parent.name == "spool" and p.suffix == ".json"]
    assert [str(p) for p in files if leaks(p.read_bytes().decode(errors="replace"))] == []


def test_a_crash_prints_its_traceback_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """An unexpected exception (a bug: faked, as none is known) whose text holds a configured
    secret ends as a `watcher.crashed` log line with the traceback blanked, exit 1."""
    canary = "canary-crash-report-token-3be0a1"
    config = tmp_path / "watcher.toml"
    config.write_text(
        f'[app]\nname = "x"\nroot = "{tmp_path / "app"}"\n\n'
        f'[git]\nremote = "{tmp_path / "none.git"}"\n\n[supervisor]\nprograms = ["x"]\n\n'
        f'[report]\nurl = "http://127.0.0.1:9/"\n'
        f'token_file = "{secret_file(tmp_path, "token", canary)}"\n')

    def crash(cfg: object, args: object) -> int:
        raise RuntimeError(f"bug while holding {canary}")

    monkeypatch.setattr(commands, "status", crash)
    try:
        code = cli.main(["status", "--config", str(config)])
    finally:
        structlog.reset_defaults()  # main() pointed logging at capsys's stream
    err = capsys.readouterr().err
    assert code == 1
    [event] = [e for e in log_events(err) if e.get("event") == "watcher.crashed"]
    assert "RuntimeError: bug while holding ***" in event["exception"]
    assert canary not in err
