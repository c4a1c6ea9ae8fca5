"""Real HTTP servers standing in for the four forges' REST APIs, accepting only the request
shapes their public docs give (paths, methods, auth header, JSON fields, allowed states) and
answering 4xx to anything else, as the real APIs do:

- GitHub (Enterprise-style prefix /api/v3):
  https://docs.github.com/en/rest/commits/statuses#create-a-commit-status,
  https://docs.github.com/en/rest/deployments/deployments#create-a-deployment,
  https://docs.github.com/en/rest/deployments/deployments#list-deployments,
  https://docs.github.com/en/rest/deployments/statuses#create-a-deployment-status
- GitLab (/api/v4): https://docs.gitlab.com/api/commits/#set-the-pipeline-status-of-a-commit
  (a same-state repost is refused: "Cannot transition status via :run from :running")
- Gitea/Forgejo (/api/v1): https://gitea.com/api/swagger#/repository/repoCreateStatus
- Bitbucket Cloud (/2.0): https://developer.atlassian.com/cloud/bitbucket/rest/
  api-group-commit-statuses/#api-repositories-workspace-repo-slug-commit-commit-statuses-build-post

    with FakeForge("github", token, "acme/mysite") as forge:
        forge.api_url           # what forge.api_url is set to
        forge.mode = "down"     # 503 to everything; "ok" again to accept
        forge.statuses          # accepted commit statuses: [(sha, state, description)]
        forge.deployments       # GitHub: {id: Deployment}
        forge.refused           # every 4xx the server gave: [(method, path, status, why)]
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

SHA = r"(?P<sha>[0-9a-f]{40})"
PREFIX = {"github": "/api/v3", "gitlab": "/api/v4", "gitea": "/api/v1", "bitbucket": "/2.0"}
STATUS_FIELDS = {
    "github": ({"state", "target_url", "description", "context"}, {"state"},
               {"error", "failure", "pending", "success"}),
    "gitlab": ({"state", "ref", "name", "context", "target_url", "description", "coverage",
                "pipeline_id"}, {"state"},
               {"pending", "running", "success", "failed", "canceled", "skipped"}),
    "gitea": ({"state", "target_url", "description", "context"}, {"state"},
              {"pending", "success", "error", "failure", "warning"}),
    "bitbucket": ({"key", "state", "url", "name", "description", "refname"},
                  {"key", "state", "url"}, {"INPROGRESS", "SUCCESSFUL", "FAILED", "STOPPED"}),
}
DEPLOYMENT_FIELDS = {"ref", "task", "auto_merge", "required_contexts", "payload", "environment",
                     "description", "transient_environment", "production_environment"}
DEPLOYMENT_STATUS_FIELDS = {"state", "target_url", "log_url", "description", "environment",
                            "environment_url", "auto_inactive"}
DEPLOYMENT_STATES = {"error", "failure", "inactive", "in_progress", "queued", "pending",
                     "success"}


class Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class Deployment:
    id: int
    sha: str
    environment: str
    payload: Any
    statuses: list[str] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)


class FakeForge:
    def __init__(self, forge: str, token: str, repo: str, lifetime_s: float = 600) -> None:
        self.forge, self.token, self.repo = forge, token, repo
        self.mode = "ok"
        self.statuses: list[tuple[str, str, str]] = []
        self.deployments: dict[int, Deployment] = {}
        self.refused: list[tuple[str, str, int, str]] = []
        self.calls: list[tuple[str, str]] = []  # every request: (method, path)
        self.push = True  # what the repository's permissions say about the token
        self._gitlab_state: dict[tuple[str, str], str] = {}  # (sha, name) -> last state
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._handle(self, "GET")

            def do_POST(self) -> None:
                owner._handle(self, "POST")

            def do_PUT(self) -> None:
                owner._handle(self, "PUT")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(lifetime_s, self.close)
        self._timer.daemon = True
        self._timer.start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{PREFIX[self.forge]}"

    def close(self) -> None:
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeForge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the server side -------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(req.path)
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        with self._lock:
            self.calls.append((method, url.path))
            try:
                if self.mode == "down":
                    status, answer = 503, {"message": "Service Unavailable"}
                else:
                    self._authorised(req)
                    status, answer = self._route(method, url.path, parse_qs(url.query),
                                                 self._body(req, method, raw))
            except Refused as exc:
                self.refused.append((method, url.path, exc.status, str(exc)))
                status, answer = exc.status, {"message": str(exc)}
        data = json.dumps(answer).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def _authorised(self, req: BaseHTTPRequestHandler) -> None:
        expected = {"github": [f"Bearer {self.token}", f"token {self.token}"],
                    "gitea": [f"token {self.token}", f"Bearer {self.token}"],
                    "bitbucket": [f"Bearer {self.token}"]}
        if self.forge == "gitlab":
            ok = req.headers.get("PRIVATE-TOKEN") == self.token
        else:
            ok = req.headers.get("Authorization") in expected[self.forge]
        if not ok:
            raise Refused(401, "bad credentials")
        version = req.headers.get("X-GitHub-Api-Version")
        if self.forge == "github" and version not in (None, "2022-11-28"):
            raise Refused(400, f"unsupported API version {version}")

    @staticmethod
    def _body(req: BaseHTTPRequestHandler, method: str, raw: bytes) -> dict[str, Any]:
        if method == "GET":
            return {}
        if "application/json" not in (req.headers.get("Content-Type") or ""):
            raise Refused(415, "Content-Type must be application/json")
        try:
            body = json.loads(raw)
        except ValueError:
            raise Refused(400, "body is not JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "body must be a JSON object")
        return body

    def _route(self, method: str, path: str, query: dict[str, list[str]],
               body: dict[str, Any]) -> tuple[int, Any]:
        prefix = PREFIX[self.forge]
        if not path.startswith(prefix + "/"):
            raise Refused(404, "Not Found")
        path = path[len(prefix):]
        if self.forge == "gitlab":
            repo = re.escape(f"/projects/{quote(self.repo, safe='')}")
        elif self.forge == "bitbucket":
            repo = re.escape(f"/repositories/{self.repo}")
        else:
            repo = re.escape(f"/repos/{self.repo}")
        if path == repo.replace("\\", "") and method == "GET":
            return 200, self._repo_info()
        status_path = {"gitlab": rf"{repo}/statuses/{SHA}",
                       "bitbucket": rf"{repo}/commit/{SHA}/statuses/build"}.get(
                           self.forge, rf"{repo}/statuses/{SHA}")
        if m := re.fullmatch(status_path, path):
            self._method(method, "POST")
            return 201, self._commit_status(m["sha"], body)
        if self.forge == "github":
            if re.fullmatch(rf"{repo}/deployments", path):
                if method == "GET":
                    return 200, self._list_deployments(query)
                self._method(method, "POST")
                return 201, self._create_deployment(body)
            if m := re.fullmatch(rf"{repo}/deployments/(?P<id>\d+)/statuses", path):
                self._method(method, "POST")
                return 201, self._deployment_status(int(m["id"]), body)
        raise Refused(404, "Not Found")

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed:
            raise Refused(405 if method != "GET" else 404, "method not allowed")

    @staticmethod
    def _fields(body: dict[str, Any], allowed: set[str], required: set[str]) -> None:
        unknown = set(body) - allowed
        if unknown:
            raise Refused(422, f"unknown fields {sorted(unknown)}")
        missing = required - set(body)
        if missing:
            raise Refused(422, f"missing fields {sorted(missing)}")
        for key, value in body.items():
            if key in {"description", "target_url", "log_url", "context", "name", "key", "url",
                       "environment", "ref"} and not isinstance(value, str):
                raise Refused(422, f"{key} must be a string")

    def _repo_info(self) -> dict[str, Any]:
        if self.forge == "gitlab":
            level = 40 if self.push else 20
            return {"id": 7, "path_with_namespace": self.repo,
                    "permissions": {"project_access": {"access_level": level},
                                    "group_access": None}}
        if self.forge == "bitbucket":
            return {"full_name": self.repo, "type": "repository"}
        return {"full_name": self.repo, "permissions": {"admin": False, "push": self.push,
                                                        "pull": True}}

    def _commit_status(self, sha: str, body: dict[str, Any]) -> dict[str, Any]:
        allowed, required, states = STATUS_FIELDS[self.forge]
        self._fields(body, allowed, required)
        state = body["state"]
        if state not in states:
            raise Refused(422 if self.forge != "gitlab" else 400, f"state {state!r} invalid")
        if self.forge == "bitbucket" and not str(body["url"]).startswith(("http://", "https://")):
            raise Refused(400, "url must be an absolute URL")
        if self.forge == "gitlab":
            name = body.get("name") or body.get("context") or "default"
            if self._gitlab_state.get((sha, name)) == state:
                raise Refused(400, f"Cannot transition status via :{state} from :{state}")
            self._gitlab_state[(sha, name)] = state
        self.statuses.append((sha, state, str(body.get("description", ""))))
        return {"id": len(self.statuses), "sha": sha, "state": state}

    def _create_deployment(self, body: dict[str, Any]) -> dict[str, Any]:
        self._fields(body, DEPLOYMENT_FIELDS, {"ref"})
        if body.get("auto_merge", True) is not False and body.get("required_contexts") != []:
            raise Refused(409, "Conflict: commit status checks failed for the ref")
        dep_id = 1000 + len(self.deployments)
        self.deployments[dep_id] = Deployment(dep_id, body["ref"],
                                              body.get("environment", "production"),
                                              body.get("payload", {}))
        return self._deployment_json(self.deployments[dep_id])

    def _list_deployments(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        unknown = set(query) - {"sha", "ref", "task", "environment", "per_page", "page"}
        if unknown:
            raise Refused(422, f"unknown parameters {sorted(unknown)}")
        found = [d for d in self.deployments.values()
                 if d.sha in query.get("sha", [d.sha])
                 and d.environment in query.get("environment", [d.environment])]
        return [self._deployment_json(d) for d in sorted(found, key=lambda d: -d.id)]

    def _deployment_status(self, dep_id: int, body: dict[str, Any]) -> dict[str, Any]:
        if dep_id not in self.deployments:
            raise Refused(404, "Not Found")
        self._fields(body, DEPLOYMENT_STATUS_FIELDS, {"state"})
        if body["state"] not in DEPLOYMENT_STATES:
            raise Refused(422, f"state {body['state']!r} invalid")
        if len(str(body.get("description", ""))) > 140:
            raise Refused(422, "description is too long (maximum is 140 characters)")
        dep = self.deployments[dep_id]
        dep.statuses.append(body["state"])
        dep.descriptions.append(str(body.get("description", "")))
        return {"id": len(dep.statuses), "state": body["state"]}

    @staticmethod
    def _deployment_json(dep: Deployment) -> dict[str, Any]:
        return {"id": dep.id, "sha": dep.sha, "ref": dep.sha, "environment": dep.environment,
                "payload": dep.payload, "task": "deploy"}
