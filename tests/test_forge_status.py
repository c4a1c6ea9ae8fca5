"""Deploy statuses on the commit (`[forge]`), delivered through the spool to real HTTP servers
that accept only each forge's documented request shapes (tests/support/forges.py cites the
API pages: GitHub commit statuses, deployments and deployment statuses; GitLab commit
status; Gitea commit status; Bitbucket Cloud build status)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support.configs import minimal_config
from support.forges import FakeForge

from watcher.config import ForgeConfig
from watcher.delivery.forge import ForgeNotifier, api_url, describe
from watcher.delivery.record import ErrorInfo, Report, new_report_id
from watcher.delivery.retry import Failed as ForgeHTTPError
from watcher.kinds import StepResult

TOKEN = "canary-forge-token-8c1d4e7a9b"
REPO = {"github": "acme/mysite", "gitlab": "acme/web/mysite", "gitea": "acme/mysite",
        "bitbucket": "acme/mysite"}
FORGES = tuple(REPO)
OLD, NEW = "a" * 40, "b" * 40
REFUSAL = ("pages.0002_visit_email: AddField(visit.email): NOT NULL without db_default; "
           "add db_default=..., or null=True, and backfill in a later deploy")


def report(outcome: str, run: str, error: ErrorInfo | None = None, event: str = "deploy",
           from_sha: str = OLD, to_sha: str = NEW) -> Report:
    return Report(
        id=run, app="mysite", host="web1", event=event, outcome=outcome, from_sha=from_sha,
        to_sha=to_sha, release=f"20261130T120000Z-{to_sha[:12]}",
        started_at="2026-11-30T12:00:00Z", finished_at="2026-11-30T12:00:30Z", duration_s=30.0,
        steps=(StepResult("fetch", "ok", 1.0),), error=error, commits=(),
        migrations_applied=(), watcher_version="0.1.0")


@pytest.fixture(params=FORGES)
def forge(request: pytest.FixtureRequest) -> Iterator[FakeForge]:
    with FakeForge(request.param, TOKEN, REPO[request.param]) as server:
        yield server


def notifier(forge: FakeForge, tmp_path: Path, budget_s: float = 2.0,
             target_url: str = "") -> ForgeNotifier:
    token = tmp_path / "forge_token"
    token.write_text(TOKEN + "\n")
    cfg = ForgeConfig(type=forge.forge, api_url=forge.api_url, repo=forge.repo,
                      token_file=str(token), environment="production", target_url=target_url)
    return ForgeNotifier(cfg, tmp_path / "spool-forge", timeout_s=0.5, budget_s=budget_s)


def run_deploy(n: ForgeNotifier, outcome: str, error: ErrorInfo | None = None,
               from_sha: str = OLD, to_sha: str = NEW) -> str:
    run = new_report_id()
    n.started(run, "deploy", to_sha, from_sha)
    n.finished(report(outcome, run, error, from_sha=from_sha, to_sha=to_sha))
    return run


PENDING = {"github": "pending", "gitlab": "running", "gitea": "pending",
           "bitbucket": "INPROGRESS"}
FINAL = {"succeeded": {"github": "success", "gitlab": "success", "gitea": "success",
                       "bitbucket": "SUCCESSFUL"},
         "failed": {"github": "failure", "gitlab": "failed", "gitea": "failure",
                    "bitbucket": "FAILED"}}


def test_a_succeeded_deploy_sets_pending_then_success(forge: FakeForge, tmp_path: Path) -> None:
    """Each forge gets the commit's pending status, then success naming the release, through
    requests its API accepts (no 4xx)."""
    run_deploy(notifier(forge, tmp_path, target_url="https://logs.example.com/mysite"),
               "succeeded")
    assert forge.refused == []
    assert [(s, st) for s, st, _ in forge.statuses] == [
        (NEW, PENDING[forge.forge]), (NEW, FINAL["succeeded"][forge.forge])]
    assert "live on production as 20261130T120000Z-bbbbbbbbbbbb" in forge.statuses[-1][2]
    assert not list((tmp_path / "spool-forge").glob("*.json"))  # delivered, nothing left


def test_a_failed_deploy_sets_failure_saying_which_step(forge: FakeForge, tmp_path: Path) -> None:
    """A deploy rolled back after its health check failed ends as failure with the step."""
    run_deploy(notifier(forge, tmp_path), "rolled_back",
               ErrorInfo("health", "http://127.0.0.1:8000/healthz answered 502", ""))
    assert forge.refused == []
    sha, state, description = forge.statuses[-1]
    assert (sha, state) == (NEW, FINAL["failed"][forge.forge])
    assert description.startswith("rolled back (health): ")


def test_a_refused_commit_says_why_in_the_description(forge: FakeForge, tmp_path: Path) -> None:
    """A commit refused in the gate (an unsafe migration) gets failure, and the description
    carries the refusal's own words, cut to 140 characters."""
    run_deploy(notifier(forge, tmp_path), "failed", ErrorInfo("check", REFUSAL, ""))
    assert forge.refused == []
    sha, state, description = forge.statuses[-1]
    assert (sha, state) == (NEW, FINAL["failed"][forge.forge])
    assert description.startswith("not deployed (check): pages.0002_visit_email: AddField")
    assert len(description) <= 140


def test_github_deployments_go_in_progress_then_success_and_the_replaced_one_inactive(
        tmp_path: Path) -> None:
    """GitHub: a Deployment per sha and environment, in_progress then success; the next
    deploy marks the deployment it replaces inactive; a failed one ends as failure."""
    with FakeForge("github", TOKEN, REPO["github"]) as forge:
        n = notifier(forge, tmp_path)
        run_deploy(n, "succeeded", from_sha=OLD, to_sha=NEW)
        third = "c" * 40
        run_deploy(n, "succeeded", from_sha=NEW, to_sha=third)
        run_deploy(n, "failed", ErrorInfo("check", REFUSAL, ""), from_sha=third, to_sha="d" * 40)
        assert forge.refused == []
        deps = sorted(forge.deployments.values(), key=lambda d: d.id)
        assert [(d.sha, d.environment, d.statuses) for d in deps] == [
            (NEW, "production", ["in_progress", "success", "inactive"]),
            (third, "production", ["in_progress", "success"]),
            ("d" * 40, "production", ["in_progress", "failure"]),
        ]
        assert deps[2].descriptions[-1].startswith("not deployed (check): pages.0002")


def test_forge_down_does_not_slow_the_deploy_and_the_next_run_delivers_once_each(
        forge: FakeForge, tmp_path: Path) -> None:
    """With the API answering 503 the whole deploy's statuses cost at most one budget (the
    rest only spool); the next run's flush delivers each, in order, exactly once."""
    forge.mode = "down"
    budget = 1.0
    n = notifier(forge, tmp_path, budget_s=budget)
    started = time.monotonic()
    run_deploy(n, "succeeded")
    took = time.monotonic() - started
    assert took < budget + 1.0, took
    assert forge.statuses == [] and len(list((tmp_path / "spool-forge").glob("*.json"))) >= 2
    forge.mode = "ok"
    later = notifier(forge, tmp_path)  # the next run: a new process, the same spool
    assert later.flush() >= 2
    assert forge.refused == []
    assert [st for _, st, _ in forge.statuses] == [PENDING[forge.forge],
                                                   FINAL["succeeded"][forge.forge]]
    assert later.flush() == 0 and len(forge.statuses) == 2  # once each
    if forge.forge == "github":
        (dep,) = forge.deployments.values()
        assert dep.statuses == ["in_progress", "success"]


def test_the_token_leaks_into_no_log_or_spool_file(tmp_path: Path) -> None:
    """The forge token travels only in the auth header: not in logs, spool files or errors."""
    with FakeForge("gitlab", TOKEN, REPO["gitlab"]) as forge:
        forge.mode = "down"
        with capture_logs() as events:
            run_deploy(notifier(forge, tmp_path, budget_s=0.5), "failed",
                       ErrorInfo("check", f"boom {TOKEN}", ""))
        assert TOKEN not in repr(events)
        for path in (tmp_path / "spool-forge").iterdir():
            if path.is_file():
                assert TOKEN not in path.read_text()


def test_check_reaches_the_api_and_checks_the_tokens_access(forge: FakeForge,
                                                             tmp_path: Path) -> None:
    """`watcher check`: ok with a token that may write statuses; a wrong token and one
    without write access fail with a reason and no secret."""
    n = notifier(forge, tmp_path)
    assert "writable" in n.check()
    (tmp_path / "forge_token").write_text("wrong-token-1234\n")
    with pytest.raises(ForgeHTTPError, match="401: the token is refused"):
        n.check()
    if forge.forge != "bitbucket":  # its repository answer carries no permissions
        (tmp_path / "forge_token").write_text(TOKEN)
        forge.push = False
        with pytest.raises(ForgeHTTPError, match=r"not write statuses|Developer role"):
            n.check()


def test_description_is_one_short_line() -> None:
    """A multi-line error becomes one line of at most 140 characters."""
    text = describe(report("failed", "r1", ErrorInfo("migrate", "line one\nline two " * 30, "")),
                    "production")
    assert "\n" not in text and len(text) == 140 and text.endswith("…")


def test_watcher_check_reaches_the_forge_with_the_token(tmp_path: Path) -> None:
    """`watcher check` prints ok for a forge the token may write to, FAIL with the reason
    (and never the token) for a token the forge refuses."""
    from support.fixtures import run_cli

    with FakeForge("github", TOKEN, REPO["github"]) as forge:
        token = tmp_path / "forge_token"
        token.write_text(TOKEN + "\n")
        config = minimal_config(tmp_path, f"""
[forge]
type = "github"
api_url = "{forge.api_url}"
repo = "{forge.repo}"
token_file = "{token}"
""")
        res = run_cli("check", "--config", str(config))
        assert f"ok    forge github: {forge.api_url} reached, acme/mysite writable" in res.stdout
        token.write_text("canary-wrong-forge-token-77\n")
        res = run_cli("check", "--config", str(config))
        assert "FAIL  forge github: HTTP 401: the token is refused" in res.stdout, res.stdout
        assert "canary-wrong-forge-token-77" not in res.stdout + res.stderr


@pytest.mark.parametrize(("forge", "error"), [
    ({"repo": "acme/mysite", "token_file": "/t"}, "forge.type is required"),
    ({"type": "github", "token_file": "/t"}, "forge.repo is required"),
    ({"type": "github", "repo": "acme", "token_file": "/t"}, "forge.repo must be owner/name"),
    ({"type": "gitea", "repo": "a/b/c", "token_file": "/t"}, "forge.repo must be owner/name"),
    ({"type": "github", "repo": "acme/mysite"}, "forge.token_file is required"),
    ({"type": "gitlab", "repo": "acme/web/mysite", "token_file": "/t",
      "api_url": "https://u:p@gitlab.example.com/api/v4"}, "must not carry credentials"),
    ({"type": "bitbucket", "repo": "acme/mysite", "token_file": "/t", "target_url": "ftp://x"},
     "forge.target_url must be an http(s) URL"),
])
def test_forge_config_errors_name_the_key(forge: dict[str, str], error: str) -> None:
    """A [forge] section that cannot work is a config error naming the key (exit 2)."""
    from watcher.config_load import build
    from watcher.errors import ConfigError

    sections = {"app": {"name": "mysite", "root": "/srv/mysite"},
                "git": {"remote": "/srv/remote.git"},
                "supervisor": {"programs": ["mysite"]}, "forge": dict(forge)}
    with pytest.raises(ConfigError, match=re.escape(error)):
        build(sections, Path("t.toml"), {})


def test_gitlab_takes_a_nested_path_or_a_project_id() -> None:
    """GitLab projects may sit in subgroups, or be named by their numeric id."""
    from watcher.config_load import build

    for repo in ("acme/web/mysite", "4242"):
        cfg = build({"app": {"name": "mysite", "root": "/srv/mysite"},
                     "git": {"remote": "/srv/remote.git"}, "supervisor": {"programs": ["m"]},
                     "forge": {"type": "gitlab", "repo": repo, "token_file": "/t"}},
                    Path("t.toml"), {})
        assert cfg.forge is not None and cfg.forge.repo == repo


def test_a_rollback_by_hand_is_a_new_github_deployment_of_the_older_commit(
        tmp_path: Path) -> None:
    """`watcher rollback` on GitHub: a new Deployment of the older commit ends success and
    the one it replaced goes inactive; commit statuses are left as the deploys set them."""
    with FakeForge("github", TOKEN, REPO["github"]) as forge:
        n = notifier(forge, tmp_path)
        run_deploy(n, "succeeded", from_sha=OLD, to_sha=NEW)
        statuses = list(forge.statuses)
        n.finished(report("succeeded", new_report_id(), event="rollback", from_sha=NEW,
                          to_sha=OLD))
        assert forge.refused == [] and forge.statuses == statuses
        deps = sorted(forge.deployments.values(), key=lambda d: d.id)
        assert [(d.sha, d.statuses) for d in deps] == [
            (NEW, ["in_progress", "success", "inactive"]), (OLD, ["in_progress", "success"])]
        assert deps[1].descriptions[-1].startswith("rolled back by hand: live on production as ")


INTERRUPTED = {"github": "error", "gitlab": "canceled", "gitea": "error",
               "bitbucket": "STOPPED"}


def test_an_interrupted_deploy_ends_its_pending_status_and_the_retry_is_accepted(
        forge: FakeForge, tmp_path: Path) -> None:
    """A deploy stopped short through no fault of the commit (supervisord or the remote
    unreachable, a SIGTERM) ends its pending status instead of leaving it running for good;
    the next check's deploy of the same commit then goes pending -> success, which GitLab
    would refuse on top of a status still running."""
    n = notifier(forge, tmp_path)
    first = new_report_id()
    n.started(first, "deploy", NEW, OLD)
    n.interrupted(first, NEW, OLD, "supervisord at http://127.0.0.1:9/RPC2 unreachable")
    run_deploy(n, "succeeded")
    assert forge.refused == []
    assert [(s, st) for s, st, _ in forge.statuses] == [
        (NEW, PENDING[forge.forge]), (NEW, INTERRUPTED[forge.forge]),
        (NEW, PENDING[forge.forge]), (NEW, FINAL["succeeded"][forge.forge])]
    assert forge.statuses[1][2].startswith("interrupted, retried at the next check: ")
    if forge.forge == "github":
        deps = sorted(forge.deployments.values(), key=lambda d: d.id)
        assert [d.statuses for d in deps] == [["in_progress", "error"],
                                              ["in_progress", "success"]]


ERROR = {"github": "error", "gitlab": "failed", "gitea": "error", "bitbucket": "FAILED"}


def test_a_failed_rollback_sets_error(forge: FakeForge, tmp_path: Path) -> None:
    """A deploy whose automatic rollback failed too ends as the forge's error state (GitHub
    also on its Deployment), saying so."""
    run_deploy(notifier(forge, tmp_path), "rollback_failed",
               ErrorInfo("rollback", "supervisord did not restart mysite", ""))
    assert forge.refused == []
    sha, state, description = forge.statuses[-1]
    assert (sha, state) == (NEW, ERROR[forge.forge])
    assert description.startswith("rollback failed (rollback): supervisord did not restart")
    if forge.forge == "github":
        (dep,) = forge.deployments.values()
        assert dep.statuses == ["in_progress", "error"]


@pytest.mark.parametrize(("kind", "url"), [
    ("github", "https://api.github.com"), ("gitlab", "https://gitlab.com/api/v4"),
    ("gitea", "https://gitea.com/api/v1"), ("bitbucket", "https://api.bitbucket.org/2.0")])
def test_api_url_defaults_to_each_forges_public_api(kind: str, url: str) -> None:
    """Without forge.api_url each forge's public API; a set one (a self-hosted GitLab, GitHub
    Enterprise) wins, without its trailing slash."""
    assert api_url(ForgeConfig(type=kind, repo="acme/mysite", token_file="t")) == url
    own = ForgeConfig(type=kind, repo="acme/mysite", token_file="t",
                      api_url="https://git.example.com/api/v4/")
    assert api_url(own) == "https://git.example.com/api/v4"
