"""Forge statuses from real deploys: `watcher --once` against a real remote, supervisord and
Gunicorn, with a fake forge API that accepts only the documented request shapes
(tests/support/forges.py cites each forge's API page)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import code_change
from support.forges import FakeForge
from support.site import Site, log_events

pytestmark = pytest.mark.slow

TOKEN = "canary-forge-e2e-token-3f9a71c2"
REPO = {"github": "acme/mysite", "gitlab": "acme/web/mysite", "gitea": "acme/mysite",
        "bitbucket": "acme/mysite"}
PENDING = {"github": "pending", "gitlab": "running", "gitea": "pending",
           "bitbucket": "INPROGRESS"}
SUCCESS = {"github": "success", "gitlab": "success", "gitea": "success",
           "bitbucket": "SUCCESSFUL"}
FAILURE = {"github": "failure", "gitlab": "failed", "gitea": "failure", "bitbucket": "FAILED"}
HEALTHZ = 'return HttpResponse(f"ok {revision()}\\n", content_type="text/plain; charset=utf-8")'
# 500 only when Gunicorn serves it: the smoke requests (Django's test client) pass, so the
# deploy switches, fails its health check and rolls back.
BROKEN = ('if request.META.get("SERVER_SOFTWARE", "").startswith("gunicorn"):\n'
          '        return HttpResponse("broken\\n", status=500)\n    ')
BAD_MODEL = ("\n\nclass Broken(models.Model):  # fields.E300: a relation to no model\n"
             '    other = models.ForeignKey("nowhere.Model", on_delete=models.CASCADE)\n')


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    made = Site(health_timeout="30s")
    (made.base / "forge.token").write_text(TOKEN + "\n")
    try:
        res = made.watcher("--once")  # the first deploy, before any [forge]
        assert res.returncode == 0, res.stderr[-2000:]
        # Later health checks fail on purpose: a shorter wait keeps the test short.
        made.config.write_text(made.config.read_text().replace(
            'timeout = "30s"\ninterval', 'timeout = "10s"\ninterval'))
        yield made
    finally:
        made.close()


def use_forge(site: Site, forge: FakeForge, budget: str = "5s") -> None:
    """Point the config's [forge] section at `forge` (replacing any earlier one)."""
    text = site.config.read_text().split("\n[forge]\n")[0]
    site.config.write_text(text + f"""
[forge]
type = "{forge.forge}"
api_url = "{forge.api_url}"
repo = "{forge.repo}"
token_file = "{site.base / 'forge.token'}"
environment = "production"
target_url = "https://logs.example.com/mysite"
timeout = "1s"
budget = "{budget}"
""")


def restore(site: Site, tag: str) -> str:
    """A good commit: the example's views and models back, plus a code change."""
    views = site.read("pages/views.py").replace(BROKEN, "")
    models = site.read("pages/models.py").replace(BAD_MODEL, "")
    return site.commit({"pages/views.py": views + f"# {tag}\n", "pages/models.py": models},
                       f"Good again: {tag}")


@pytest.mark.parametrize("kind", list(REPO))
def test_succeeded_failed_and_refused_deploys_set_the_commit_status(site: Site,
                                                                    kind: str) -> None:
    """For each forge: a deploy that goes live ends pending -> success; one rolled back
    after its health check ends failure; one refused in the gate ends failure saying why.
    GitHub also gets a Deployment per deploy (in_progress, then success or failure) and
    the replaced deployment goes inactive. Every request matches the API's documented shape."""
    with FakeForge(kind, TOKEN, REPO[kind]) as forge:
        use_forge(site, forge)
        good = restore(site, f"forge {kind}")
        res = site.watcher("--once")
        assert res.returncode == 0, res.stderr[-3000:]
        assert [(s, st) for s, st, _ in forge.statuses] == [
            (good, PENDING[kind]), (good, SUCCESS[kind])]
        assert forge.statuses[-1][2].startswith("live on production as ")

        views = site.read("pages/views.py")
        unhealthy = site.commit({"pages/views.py": views.replace(
            HEALTHZ, BROKEN + HEALTHZ)}, "Health answers 500 under Gunicorn")
        assert site.watcher("--once").returncode == 1
        sha, state, description = forge.statuses[-1]
        assert (sha, state) == (unhealthy, FAILURE[kind])
        assert description.startswith("rolled back (health): "), description

        refused = site.commit({"pages/models.py": site.read("pages/models.py") + BAD_MODEL},
                              "A model Django's checks refuse")
        assert site.watcher("--once").returncode == 1
        sha, state, description = forge.statuses[-1]
        assert (sha, state) == (refused, FAILURE[kind])
        assert description.startswith("not deployed (check): "), description
        assert len(forge.statuses) == 6 and forge.refused == []
        if kind == "github":
            deps = sorted(forge.deployments.values(), key=lambda d: d.id)
            assert [(d.sha, d.statuses) for d in deps] == [
                (good, ["in_progress", "success"]),
                (unhealthy, ["in_progress", "failure"]),
                (refused, ["in_progress", "failure"])]
    # The next forge's first deploy replaces `good`: on GitHub it becomes inactive there;
    # here the replaced one is checked by the GitHub-only test below.


def test_github_marks_the_deployment_it_replaces_inactive(site: Site) -> None:
    """Two deploys in a row: the first one's Deployment ends inactive, the second success."""
    with FakeForge("github", TOKEN, REPO["github"]) as forge:
        use_forge(site, forge)
        first = restore(site, "github inactive 1")
        assert site.watcher("--once").returncode == 0
        second = code_change(site, "github inactive 2")
        assert site.watcher("--once").returncode == 0
        assert forge.refused == []
        deps = sorted(forge.deployments.values(), key=lambda d: d.id)
        assert [(d.sha, d.environment, d.statuses) for d in deps] == [
            (first, "production", ["in_progress", "success", "inactive"]),
            (second, "production", ["in_progress", "success"])]


def test_forge_down_during_a_deploy_costs_one_budget_and_the_next_run_delivers(
        site: Site) -> None:
    """With the forge API answering 503 the deploy still goes live, the statuses cost at
    most one `forge.budget` (one failed send; the rest is only spooled), and the next run
    delivers every status once, in order; a run after that sends nothing again."""
    with FakeForge("gitea", TOKEN, REPO["gitea"]) as forge:
        use_forge(site, forge, budget="1s")
        forge.mode = "down"
        sha = restore(site, "forge down")
        started = time.monotonic()
        res = site.watcher("--once")
        took = time.monotonic() - started
        assert res.returncode == 0, res.stderr[-3000:]
        assert site.served_revision() == sha
        events = log_events(res.stderr)
        assert [e["event"] for e in events].count("forge.failed") == 1
        assert "forge.deferred" in [e["event"] for e in events]
        finished = next(e for e in events if e["event"] == "deploy.finished")
        steps_s = sum(s["duration_s"] for s in site.api.requests[-1].json["steps"])
        assert finished["duration_s"] - steps_s < 1.0 + 1.5  # the budget, plus slack
        assert took - finished["duration_s"] < 1.0 + 4.0  # start-up and the final spooling
        assert forge.statuses == []
        forge.mode = "ok"
        # The flush's budget bounds the whole flush (its first send imports `requests`):
        # 1 s may hold only one of the two sends on a busy machine, so the flush gets more.
        use_forge(site, forge, budget="10s")
        assert site.watcher("--once").returncode == 0  # up to date; flushes the spool
        assert [(s, st) for s, st, _ in forge.statuses] == [(sha, "pending"), (sha, "success")]
        assert site.watcher("--once").returncode == 0
        assert len(forge.statuses) == 2 and forge.refused == []
        spool = Path(site.root / ".watcher" / "spool-forge")
        assert not [p for p in spool.iterdir() if re.fullmatch(r"\d+-.*\.json", p.name)]


def test_the_forge_token_appears_in_no_log_state_or_report(site: Site) -> None:
    """The forge token travels only in the auth header."""
    with FakeForge("bitbucket", TOKEN, REPO["bitbucket"]) as forge:
        use_forge(site, forge)
        restore(site, "token")
        res = site.watcher("--once")
        assert res.returncode == 0
        assert TOKEN not in res.stdout + res.stderr
        for path in (site.root / ".watcher").rglob("*"):
            if path.is_file() and path.name != "lock":
                assert TOKEN not in path.read_text(errors="replace"), path
        assert all(TOKEN not in r.body.decode() for r in site.api.requests)


def test_a_deploy_cut_short_by_supervisord_down_ends_its_status_and_is_retried(
        site: Site) -> None:
    """supervisord unreachable once the release is built: exit 3, nothing marked bad, and
    the commit's `running` status on GitLab is ended (canceled), so the next check's deploy
    of the same commit is accepted as running -> success rather than refused."""
    with FakeForge("gitlab", TOKEN, REPO["gitlab"]) as forge:
        use_forge(site, forge)
        good = restore(site, "supervisord down")
        config = site.config.read_text()
        url = re.search(r'\[supervisor\]\nurl = "([^"]+)"', config)
        assert url is not None
        site.config.write_text(config.replace(url.group(1), "http://127.0.0.1:9/RPC2"))
        res = site.watcher("--once")
        site.config.write_text(config)
        assert res.returncode == 3, res.stderr[-3000:]
        assert [(s, st) for s, st, _ in forge.statuses] == [(good, "running"),
                                                            (good, "canceled")]
        assert "supervisor" in forge.statuses[-1][2], forge.statuses[-1]
        res = site.watcher("--once")
        assert res.returncode == 0, res.stderr[-3000:]
        assert [st for _, st, _ in forge.statuses] == ["running", "canceled", "running",
                                                      "success"]
        assert forge.refused == []
