"""Deploy statuses back on the commit (`[forge]`, DESIGN §7): GitHub, GitLab, Gitea/Forgejo,
Bitbucket Cloud.

A deploy turns into a few small *actions*, each one document in `.watcher/spool-forge/`,
delivered in order through the same `Outbox` as the reports: spooled first, retried,
removed once the forge accepted it, never raising and never blocking a deploy.

- `status`: the commit status. GitHub `POST /repos/{o}/{r}/statuses/{sha}` and Gitea
  `POST /repos/{o}/{r}/statuses/{sha}` (pending, success, failure, error); GitLab
  `POST /projects/:id/statuses/:sha` (running, success, failed; the environment is in the
  status `name`, its commit status API has no environment field); Bitbucket
  `POST /repositories/{w}/{r}/commit/{sha}/statuses/build` (INPROGRESS, SUCCESSFUL, FAILED).
- `deployment` (GitHub): `POST /repos/{o}/{r}/deployments` for the sha and environment,
  tagged with the run id in its `payload`; looked up first, so a retry never makes two.
- `deployment_status` (GitHub): in_progress, then success, failure or error; `inactive` for
  the deployment of the commit the new one replaced.

While the forge fails, the next minute only spools (the first failure cost at most
`forge.budget`, so a deploy is never slowed by more); a later `flush` (the next run, or the
daemon's next check) delivers, oldest first, once each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog

from watcher.config import ForgeConfig
from watcher.delivery.forge_http import ForgeHTTP
from watcher.delivery.outbox import Outbox
from watcher.delivery.record import Report
from watcher.delivery.retry import Delivered, Failed, Rejected, delivered

_log = structlog.get_logger("watcher.delivery.forge")

DEFAULT_API = {
    "github": "https://api.github.com",
    "gitlab": "https://gitlab.com/api/v4",
    "gitea": "https://gitea.com/api/v1",
    "bitbucket": "https://api.bitbucket.org/2.0",
}
_REST_S = 60.0  # after a failed send, only spool for this long (the next check tries again)
_DESCRIPTION_MAX = 140  # GitHub's limit for a deployment status; the others take more
# Our states, as each forge spells them. `interrupted`: the deploy stopped for a reason that
# is not the commit's (the remote, supervisord or the fleet unreachable, a SIGTERM) and the
# next check tries again; the pending status must still end, or it stays "running" for good
# (and GitLab refuses the next run's "running" on top of it).
_GITHUB = {"interrupted": "error"}  # GitHub and Gitea; the others are their own names
_GITLAB = {"pending": "running", "success": "success", "failure": "failed", "error": "failed",
           "interrupted": "canceled"}
_BITBUCKET = {"pending": "INPROGRESS", "success": "SUCCESSFUL", "failure": "FAILED",
              "error": "FAILED", "interrupted": "STOPPED"}
_FINAL = {"succeeded": "success", "failed": "failure", "rolled_back": "failure",
          "rollback_failed": "error"}


def api_url(cfg: ForgeConfig) -> str:
    return (cfg.api_url or DEFAULT_API.get(cfg.type, "")).rstrip("/")


def describe(report: Report, environment: str) -> str:
    """One line for the status: where it went live, or why not (the refusal's own words)."""
    if report.outcome == "succeeded":
        text = f"live on {environment} as {report.release}"
        if report.event == "rollback":
            text = f"rolled back by hand: {text}"
    else:
        what = {"failed": "not deployed", "rolled_back": "rolled back",
                "rollback_failed": "rollback failed"}.get(report.outcome, report.outcome)
        error = report.error
        text = f"{what} ({error.step}): {error.message}" if error else what
    text = " ".join(text.split())
    return text if len(text) <= _DESCRIPTION_MAX else text[:_DESCRIPTION_MAX - 1] + "…"


@dataclass(frozen=True)
class ForgeStatus:
    """What the forge is told at one point of a run (a pure value, easy to test)."""

    run: str
    event: str  # deploy | rollback
    sha: str
    from_sha: str | None
    state: str  # pending | success | failure | error | interrupted
    description: str


def actions(forge: str, status: ForgeStatus) -> list[dict[str, Any]]:
    """The documents to spool for `status`, in the order they must be sent."""
    common = {"forge": forge, "run": status.run, "description": status.description}
    docs: list[dict[str, Any]] = []
    if status.event == "deploy":
        docs.append({"action": "status", "sha": status.sha, "state": status.state})
    if forge == "github":
        if status.state == "pending":
            docs.append({"action": "deployment", "sha": status.sha})
        gh_state = {"pending": "in_progress"}.get(status.state, _GITHUB.get(status.state,
                                                                            status.state))
        docs.append({"action": "deployment_status", "sha": status.sha, "state": gh_state})
        if status.state == "success" and status.from_sha and status.from_sha != status.sha:
            docs.append({"action": "inactivate", "sha": status.from_sha})
    return [{**common, **doc, "id": f"{status.run}-{status.state}-{i}"}
            for i, doc in enumerate(docs)]


class ForgeNotifier:
    def __init__(self, cfg: ForgeConfig, spool_dir: Path, timeout_s: float = 5.0,
                 budget_s: float = 5.0) -> None:
        self.cfg = cfg
        self.budget_s = budget_s
        self.http = ForgeHTTP(cfg.type, api_url(cfg), cfg.token_file, timeout_s)
        self._down_until = 0.0  # a send failed: until then only spool, do not try
        self._outbox = Outbox(spool_dir, 5 * 1024 * 1024, "forge", self._deliver, self._token)

    # -- what the engine calls ---------------------------------------------------------
    def started(self, run: str, event: str, sha: str, from_sha: str | None) -> None:
        """The deploy of `sha` began: pending (GitHub: a Deployment, in_progress)."""
        if event != "deploy":
            return  # a rollback's statuses are sent once, at its end
        self._send(actions(self.cfg.type, ForgeStatus(run, event, sha, from_sha, "pending",
                                                      f"deploying to {self.cfg.environment}")))

    def interrupted(self, run: str, sha: str, from_sha: str | None, reason: str) -> None:
        """The deploy `started` announced stopped short, through no fault of the commit: its
        pending status ends (an error on GitHub and Gitea, canceled on GitLab, STOPPED on
        Bitbucket) saying the next check retries it."""
        text = " ".join(f"interrupted, retried at the next check: {reason}".split())
        if len(text) > _DESCRIPTION_MAX:
            text = text[:_DESCRIPTION_MAX - 1] + "…"
        self._send(actions(self.cfg.type, ForgeStatus(run, "deploy", sha, from_sha,
                                                      "interrupted", text)))

    def finished(self, report: Report) -> None:
        """The run ended: success, failure or error, saying why; the replaced one inactive."""
        state = _FINAL.get(report.outcome)
        if state is None:
            return
        if report.event == "rollback":
            if report.outcome != "succeeded":
                return
            # A rollback by hand is a new deployment of the older commit (GitHub only).
            pending = ForgeStatus(report.id, "rollback", report.to_sha, report.from_sha,
                                  "pending", "rolling back")
            docs = actions(self.cfg.type, pending)
        else:
            docs = []
        final = ForgeStatus(report.id, report.event, report.to_sha, report.from_sha, state,
                            describe(report, self.cfg.environment))
        self._send(docs + actions(self.cfg.type, final))

    def flush(self) -> int:
        """Deliver what earlier runs spooled, oldest first (not while the forge is resting)."""
        if time.monotonic() < self._down_until:
            return 0
        return self._outbox.flush(self.budget_s)

    def check(self) -> str:
        """Reach the API with the token and check it may write statuses; the detail for
        `watcher check`. Raises Failed (safe to print) when it may not."""
        forge, repo = self.cfg.type, self.cfg.repo
        deadline = time.monotonic() + self.budget_s
        try:
            info = self.http.call("GET", self._repo_path(), deadline) or {}
        except Failed as exc:
            hint = {401: "the token is refused", 403: "the token may not read the repository",
                    404: f"no repository {repo}, or the token cannot see it"}
            raise Failed(f"{exc}: {hint.get(exc.status or 0, 'API unreachable')}",
                                 exc.status) from None
        perms = info.get("permissions") if isinstance(info, dict) else None
        if forge in ("github", "gitea") and isinstance(perms, dict) and not perms.get("push"):
            raise Failed(f"the token can read {repo} but not write statuses "
                                 "(GitHub/Gitea need push access)")
        if forge == "gitlab" and isinstance(perms, dict):
            levels = [(perms.get(k) or {}).get("access_level", 0)
                      for k in ("project_access", "group_access")]
            if max(levels) < 30:
                raise Failed(f"the token can read {repo} but statuses need the "
                                     "Developer role (access level 30)")
        return f"{api_url(self.cfg)} reached, {repo} writable with the token"

    # -- delivery ------------------------------------------------------------------------
    def _send(self, docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        if time.monotonic() < self._down_until:
            for doc in docs:
                self._outbox.hold(doc)
            _log.info("forge.deferred", count=len(docs), reason="forge failed earlier")
            return
        for doc in docs[:-1]:
            self._outbox.hold(doc)
        if not self._outbox.send(docs[-1], self.budget_s):
            self._down_until = time.monotonic() + _REST_S

    def _token(self) -> str:
        try:
            return self.http.read_token()
        except Failed:
            return ""

    def _deliver(self, doc: dict[str, Any], deadline: float) -> Delivered:
        where = {"id": doc.get("id"), "action": doc.get("action"), "forge": self.cfg.type}
        return delivered("forge", "forge.token_file", where, lambda: self._do(doc, deadline))

    def _do(self, doc: dict[str, Any], deadline: float) -> None:
        action, sha = doc["action"], str(doc["sha"])
        if action == "status":
            self._status(sha, str(doc["state"]), str(doc["description"]), deadline)
        elif action == "deployment":
            if self._deployments(sha, deadline, run=str(doc["run"])):
                return  # made by an earlier try whose answer was lost
            self.http.call("POST", self._repo_path("/deployments"), deadline, {
                "ref": sha, "environment": self.cfg.environment, "auto_merge": False,
                "required_contexts": [], "payload": {"watcher_run": doc["run"]},
                "description": doc["description"],
                "production_environment": self.cfg.environment == "production"})
        elif action in ("deployment_status", "inactivate"):
            run = str(doc["run"]) if action == "deployment_status" else None
            found = self._deployments(sha, deadline, run=run)
            if not found:
                if action == "inactivate":
                    return  # the replaced commit was never deployed with a Deployment
                raise Rejected(f"no deployment of {sha[:12]} for run {run}")
            body = {"state": "inactive" if run is None else doc["state"],
                    "description": doc["description"], "environment": self.cfg.environment,
                    "auto_inactive": False}
            if self.cfg.target_url:
                body["log_url"] = self.cfg.target_url
            self.http.call("POST", self._repo_path(f"/deployments/{found[0]}/statuses"),
                           deadline, body)
        else:
            raise Rejected(f"unknown action {action!r}")

    def _status(self, sha: str, state: str, description: str, deadline: float) -> None:
        forge, env, url = self.cfg.type, self.cfg.environment, self.cfg.target_url
        body: dict[str, Any]
        if forge == "gitlab":
            body = {"state": _GITLAB[state], "name": f"watcher/{env}",
                    "description": description}
            path = f"/projects/{quote(self.cfg.repo, safe='')}/statuses/{sha}"
        elif forge == "bitbucket":
            body = {"key": f"watcher-{env}"[:40], "state": _BITBUCKET[state],
                    "name": f"watcher: {env}", "description": description,
                    "url": url or f"https://bitbucket.org/{self.cfg.repo}/commits/{sha}"}
            path = self._repo_path(f"/commit/{sha}/statuses/build")
        else:  # github, gitea
            body = {"state": _GITHUB.get(state, state), "context": f"watcher/{env}",
                    "description": description}
            path = self._repo_path(f"/statuses/{sha}")
        if url and forge != "bitbucket":
            body["target_url"] = url
        self.http.call("POST", path, deadline, body)

    def _deployments(self, sha: str, deadline: float, run: str | None) -> list[int]:
        """Ids of GitHub deployments of `sha` to our environment, newest first; with `run`,
        only the one made for that run."""
        found = self.http.call("GET", self._repo_path("/deployments"), deadline,
                               params={"sha": sha, "environment": self.cfg.environment}) or []
        ids = []
        for dep in found if isinstance(found, list) else []:
            payload = dep.get("payload") if isinstance(dep, dict) else None
            mine = isinstance(payload, dict) and payload.get("watcher_run") == run
            if run is None or mine:
                ids.append(int(dep["id"]))
        return ids

    def _repo_path(self, tail: str = "") -> str:
        repo = self.cfg.repo
        if self.cfg.type == "gitlab":
            return f"/projects/{quote(repo, safe='')}{tail}"
        if self.cfg.type == "bitbucket":
            return f"/repositories/{repo}{tail}"
        return f"/repos/{repo}{tail}"
