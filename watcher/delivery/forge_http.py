"""HTTP to a forge's REST API (GitHub, GitLab, Gitea/Forgejo, Bitbucket Cloud): the one
place that sends forge requests, with the token and the translation of HTTP outcomes into
`delivery.retry`'s errors; the shared retry policy (`retry.with_retries`) drives it.

The token is read from `token_file` at each call (rotation needs no restart), registered
with the log scrubber, sent only in a header, and never put in an error message; requests'
exceptions are reported by class name only (their text carries the URL), and redirects are
not followed (one could carry the token to another host).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import structlog

from watcher.delivery.retry import (
    Failed,
    Rejected,
    Retry,
    classify_status,
    read_token,
    with_retries,
)

_log = structlog.get_logger("watcher.delivery.forge")

_MAX_ATTEMPTS = 5


def auth_headers(forge: str, token: str) -> dict[str, str]:
    """The headers each forge documents for a token."""
    if forge == "github":
        return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28"}
    if forge == "gitlab":
        return {"PRIVATE-TOKEN": token}
    if forge == "gitea":
        return {"Authorization": f"token {token}"}
    return {"Authorization": f"Bearer {token}"}  # bitbucket: repository/workspace access token


@dataclass(frozen=True)
class ForgeHTTP:
    forge: str
    api_url: str  # with the API's prefix, e.g. https://gitlab.example.com/api/v4
    token_file: str
    timeout_s: float = 5.0

    def read_token(self) -> str:
        return read_token(self.token_file, "forge.token_file")

    def call(self, method: str, path: str, deadline: float, body: dict[str, Any] | None = None,
             params: dict[str, str] | None = None) -> Any:
        """`method` `api_url + path` until a 2xx (its JSON, or None), a final error or the
        deadline; raises retry.Failed (Retry when the last try was transient, Rejected when
        the forge refused the body)."""
        token = self.read_token()
        headers = {"User-Agent": "watcher", **auth_headers(self.forge, token)}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        url = self.api_url.rstrip("/") + path
        answer: list[Any] = []

        def attempt(remaining: float) -> None:
            answer[:] = [self._attempt(method, url, data, headers, params, remaining)]

        def on_retry(exc: Failed, number: int) -> None:
            _log.warning("forge.retry", method=method, path=path, error=str(exc),
                         attempt=number)

        with_retries(attempt, deadline=deadline, max_attempts=_MAX_ATTEMPTS,
                     floor=min(0.25, self.timeout_s), on_retry=on_retry)
        return answer[0] if answer else None

    def _attempt(self, method: str, url: str, data: bytes | None, headers: dict[str, str],
                 params: dict[str, str] | None, remaining: float) -> Any:
        import requests  # here, not at the top: most runs never talk to a forge

        not_transient = (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                         requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader)
        try:
            resp = requests.request(method, url, data=data, headers=headers, params=params,
                                    timeout=min(self.timeout_s, remaining),
                                    allow_redirects=False)
        except not_transient as exc:
            raise Failed(type(exc).__name__) from None
        except requests.RequestException as exc:
            raise Retry(type(exc).__name__) from None
        try:
            if resp.status_code == 409:  # GitHub: the deployment conflicts; resending won't help
                raise Rejected("HTTP 409", 409)
            classify_status(resp.status_code, resp.headers.get("Retry-After", ""))
            try:
                return resp.json() if resp.content else None
            except ValueError:
                return None
        finally:
            resp.close()
