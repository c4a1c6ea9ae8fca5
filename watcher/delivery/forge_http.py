"""HTTP to a forge's REST API (GitHub, GitLab, Gitea/Forgejo, Bitbucket Cloud): the one
place that sends forge requests, with the token, the retries and the error translation.

Each call retries with jittered exponential backoff (tenacity) on a connection error, a
timeout, a 5xx or a 429 (honouring Retry-After), within a deadline the caller gives; a
4xx is final. The token is read from `token_file` at each call (rotation needs no restart),
registered with the log scrubber, sent only in a header, and never put in an error message;
requests' exceptions are reported by class name only (their text carries the URL), and
redirects are not followed (one could carry the token to another host).

The retry policy mirrors `watcher.delivery.report` (the lead unifies both).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from watcher.log import register_secret

_log = structlog.get_logger("watcher.delivery.forge")

_MAX_ATTEMPTS = 5
_PAYLOAD_STATUSES = frozenset({400, 409, 413, 415, 422})  # this body is refused, not the API


class ForgeHTTPError(Exception):
    """A request failed; the message is safe to log (no token, no URL)."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float = 0) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class Retryable(ForgeHTTPError):
    """A connection error, a timeout, a 5xx or a 429: the same request may pass later."""


class PayloadRejected(ForgeHTTPError):
    """The API refused this body (400, 422...): resending it cannot help."""


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
        path = self.token_file
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as exc:
            raise ForgeHTTPError(f"cannot read forge.token_file {path}: "
                                 f"{type(exc).__name__}") from None
        if not token or not all("!" <= ch <= "~" for ch in token):  # would break the header
            raise ForgeHTTPError(f"forge.token_file {path} holds no usable token")
        register_secret(token)
        return token

    def call(self, method: str, path: str, deadline: float, body: dict[str, Any] | None = None,
             params: dict[str, str] | None = None) -> Any:
        """`method` `api_url + path` until a 2xx (its JSON, or None), a final error or the
        deadline; raises ForgeHTTPError (Retryable when the last try was transient)."""
        token = self.read_token()
        headers = {"User-Agent": "watcher", **auth_headers(self.forge, token)}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        floor = min(0.25, self.timeout_s)
        jitter = wait_random_exponential(multiplier=0.25, max=4)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            delay = max(jitter(state), getattr(exc, "retry_after", 0))
            return max(0.0, min(delay, deadline - time.monotonic() - floor))

        def stop(state: RetryCallState) -> bool:
            return state.attempt_number >= _MAX_ATTEMPTS or deadline - time.monotonic() < floor

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            _log.warning("forge.retry", method=method, path=path, error=str(exc),
                         attempt=state.attempt_number)

        result: Any = None
        for attempt in Retrying(stop=stop, wait=wait, before_sleep=before_sleep, reraise=True,
                                retry=retry_if_exception_type(Retryable)):
            with attempt:
                result = self._attempt(method, self.api_url.rstrip("/") + path, data, headers,
                                       params, deadline)
        return result

    def _attempt(self, method: str, url: str, data: bytes | None, headers: dict[str, str],
                 params: dict[str, str] | None, deadline: float) -> Any:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Retryable("time budget used up")
        import requests  # here, not at the top: most runs never talk to a forge

        not_transient = (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                         requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader)
        try:
            resp = requests.request(method, url, data=data, headers=headers, params=params,
                                    timeout=min(self.timeout_s, remaining),
                                    allow_redirects=False)
        except not_transient as exc:
            raise ForgeHTTPError(type(exc).__name__) from None
        except requests.RequestException as exc:
            raise Retryable(type(exc).__name__) from None
        status = resp.status_code
        try:
            if 200 <= status < 300:
                try:
                    return resp.json() if resp.content else None
                except ValueError:
                    return None
            if status == 429 or status >= 500:
                after = resp.headers.get("Retry-After", "")
                raise Retryable(f"HTTP {status}", status, int(after) if after.isdigit() else 0)
            if status in _PAYLOAD_STATUSES:
                raise PayloadRejected(f"HTTP {status}", status)
            raise ForgeHTTPError(f"HTTP {status}", status)  # 3xx, 401, 403, 404
        finally:
            resp.close()
