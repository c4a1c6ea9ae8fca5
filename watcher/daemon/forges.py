"""Pure: each forge's webhook signature check and push payload, turned into a decision.

Nothing here does I/O; `webhooks.py` owns the socket. A push only ever becomes a *hint* to
check the remote now: the sha in the payload is never trusted (DESIGN §6).

| forge     | signature header                           | event header                       |
|-----------|--------------------------------------------|------------------------------------|
| github    | X-Hub-Signature-256: sha256=<hex hmac>     | X-GitHub-Event: push / ping        |
| gitlab    | X-Gitlab-Token: <the secret itself>        | body object_kind: push / tag_push  |
| gitea     | X-Gitea-Signature or X-Forgejo-Signature:  | X-Gitea-Event / X-Forgejo-Event    |
|           | <bare hex hmac>                            |                                    |
| bitbucket | X-Hub-Signature: sha256=<hex hmac>         | X-Event-Key: repo:push /           |
|           |                                            | diagnostics:ping                   |
| generic   | X-Signature: sha256=<hex hmac>             | none; body {"ref"} or {"branch"}   |
| trigger   | X-Signature: sha256=<hex hmac>             | none: `watcher trigger`, any body  |

Every hmac is HMAC-SHA256 of the raw body, compared in constant time. `judge` is the whole
verdict on a request: signature first, and the payload is parsed only when it holds.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

FORGES = ("github", "gitlab", "gitea", "bitbucket", "generic")
SOURCES = (*FORGES, "trigger")

_SIGNATURE_HEADERS: dict[str, tuple[str, ...]] = {
    "github": ("x-hub-signature-256",),
    "gitlab": ("x-gitlab-token",),
    "gitea": ("x-forgejo-signature", "x-gitea-signature"),
    "bitbucket": ("x-hub-signature",),
    "generic": ("x-signature",),
    "trigger": ("x-signature",),
}


@dataclass(frozen=True)
class Decision:
    """What to do with a verified request: queue a check, ignore it, or call it malformed."""

    outcome: Literal["queued", "ignored", "malformed", "unauthorized"]
    reason: str = ""


QUEUED = Decision("queued")


def ignored(reason: str) -> Decision:
    return Decision("ignored", reason)


def malformed(reason: str) -> Decision:
    return Decision("malformed", reason)


class _Malformed(Exception):
    """Raised inside the parsers; `parse_push` turns it into a malformed decision."""


def sign(secret: bytes, body: bytes) -> str:
    """The lowercase hex HMAC-SHA256 of `body`: what senders put in their signature header."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _signature_value(forge: str, headers: Mapping[str, str]) -> str | None:
    if forge not in _SIGNATURE_HEADERS:
        raise ValueError(f"unknown forge {forge!r}")
    lowered = _lower(headers)
    for name in _SIGNATURE_HEADERS[forge]:
        if name in lowered:
            return lowered[name].strip()
    return None


def has_signature(forge: str, headers: Mapping[str, str]) -> bool:
    """Whether the forge's signature (or token) header is present at all."""
    return _signature_value(forge, headers) is not None


def verify(forge: str, headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    """Whether the request carries a valid signature for `body`; never true without a secret."""
    given = _signature_value(forge, headers)
    if not secret or given is None:
        return False
    # Header values are text; non-ASCII ones can never match, but must not raise either.
    given_bytes = given.encode("utf-8", "replace")
    if forge == "gitlab":
        return hmac.compare_digest(given_bytes, secret)
    expected = sign(secret, body).encode("ascii")
    if forge == "gitea":
        return hmac.compare_digest(given_bytes.lower(), expected)
    scheme, sep, digest = given_bytes.partition(b"=")
    if not sep or scheme.lower() != b"sha256":
        return False
    return hmac.compare_digest(digest.lower(), expected)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Malformed("body is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise _Malformed("body is not a JSON object")
    return payload


def _field(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise _Malformed(f"missing or invalid {key!r}")
    return value


TAGS = "refs/tags/"

def _is_zero_sha(value: object) -> bool:
    return isinstance(value, str) and bool(value) and set(value) == {"0"}


def watched(branch: str, tag_pattern: str) -> str:
    """What pushes are hints for: the branch, or with `git.tag_pattern` the tags matching it,
    spelled `refs/tags/<pattern>` (the `branch` argument of the parsers below)."""
    return f"{TAGS}{tag_pattern}" if tag_pattern else branch


def _tag_wanted(name: str, branch: str) -> bool:
    return branch.startswith(TAGS) and fnmatch.fnmatchcase(name, branch[len(TAGS):])


def _by_ref(ref: str, branch: str, deleted: bool) -> Decision:
    if branch.startswith(TAGS):  # git.tag_pattern: a matching tag is the hint, not a branch
        if ref.startswith(TAGS) and _tag_wanted(ref[len(TAGS):], branch) and not deleted:
            return QUEUED
        return ignored(f"ref {_short(ref)} does not match {_short(branch)}")
    if ref.startswith("refs/tags/"):
        return ignored(f"tag {_short(ref[len('refs/tags/'):])}")
    if ref != f"refs/heads/{branch}":
        return ignored(f"ref {_short(ref)} is not refs/heads/{branch}")
    if deleted:
        return ignored("branch deleted")
    return QUEUED


def _github(headers: dict[str, str], payload: dict[str, Any], branch: str) -> Decision:
    event = headers.get("x-github-event")
    if not event:
        raise _Malformed("missing X-GitHub-Event header")
    if event == "ping":
        return ignored("ping")
    if event != "push":
        return ignored(f"event {_short(event)} is not a push")
    deleted = payload.get("deleted") is True or _is_zero_sha(payload.get("after"))
    return _by_ref(_field(payload, "ref"), branch, deleted)


def _gitlab(headers: dict[str, str], payload: dict[str, Any], branch: str) -> Decision:
    kind = _field(payload, "object_kind")
    if kind == "tag_push" and not branch.startswith(TAGS):
        return ignored("tag push")
    if kind == "tag_push":
        return _by_ref(_field(payload, "ref"), branch, _is_zero_sha(payload.get("after")))
    if kind != "push":
        return ignored(f"event {_short(kind)} is not a push")
    return _by_ref(_field(payload, "ref"), branch, _is_zero_sha(payload.get("after")))


def _gitea(headers: dict[str, str], payload: dict[str, Any], branch: str) -> Decision:
    event = headers.get("x-forgejo-event") or headers.get("x-gitea-event")
    if not event:
        raise _Malformed("missing X-Gitea-Event header")
    if event != "push":
        return ignored(f"event {_short(event)} is not a push")
    return _by_ref(_field(payload, "ref"), branch, _is_zero_sha(payload.get("after")))


def _bitbucket(headers: dict[str, str], payload: dict[str, Any], branch: str) -> Decision:
    key = headers.get("x-event-key")
    if not key:
        raise _Malformed("missing X-Event-Key header")
    if key == "diagnostics:ping":
        return ignored("ping")
    if key != "repo:push":
        return ignored(f"event {_short(key)} is not a push")
    push = payload.get("push")
    changes = push.get("changes") if isinstance(push, dict) else None
    if not isinstance(changes, list):
        raise _Malformed("missing push.changes")
    reasons: list[str] = []
    for change in changes:
        new = change.get("new", "absent") if isinstance(change, dict) else "absent"
        if new is None:  # the ref was deleted; `old` says which one
            reasons.append("branch deleted")
            continue
        if not isinstance(new, dict):
            raise _Malformed("push.changes[].new is not an object")
        kind, name = _field(new, "type"), _field(new, "name")
        if (kind == "branch" and name == branch) or (kind == "tag" and _tag_wanted(name, branch)):
            return QUEUED
        reasons.append(f"tag {_short(name)}" if kind == "tag" else
                       f"{_short(kind)} {_short(name)} is not branch {branch}")
    return ignored(reasons[0] if reasons else "no changes")


def _generic(headers: dict[str, str], payload: dict[str, Any], branch: str) -> Decision:
    if "ref" in payload:
        ref = _field(payload, "ref")
        return _by_ref(ref if ref.startswith("refs/") else f"refs/heads/{ref}", branch, False)
    if "branch" in payload:
        name = _field(payload, "branch")
        return QUEUED if name == branch else ignored(f"branch {_short(name)} is not {branch}")
    return QUEUED  # no ref at all: a plain "check now" hint


_PARSERS: dict[str, Callable[[dict[str, str], dict[str, Any], str], Decision]] = {
    "github": _github,
    "gitlab": _gitlab,
    "gitea": _gitea,
    "bitbucket": _bitbucket,
    "generic": _generic,
}


def parse_push(forge: str, headers: Mapping[str, str], body: bytes, branch: str) -> Decision:
    """Decide what a (verified) request means for `branch`. Call only after `verify`."""
    if forge == "trigger":
        return QUEUED  # `watcher trigger`: any body, only the key counts
    if forge not in _PARSERS:
        raise ValueError(f"unknown forge {forge!r}")
    if forge == "generic" and not body.strip():
        return QUEUED  # `curl -X POST` with a signature and no body is a hint too
    try:
        return _PARSERS[forge](_lower(headers), _json_object(body), branch)
    except _Malformed as exc:
        return malformed(str(exc))


def judge(forge: str, headers: Mapping[str, str], body: bytes, secret: bytes, branch: str,
          ) -> Decision:
    """The verdict on a whole request: unauthorized unless signed with `secret`, else the push."""
    if not secret:
        return Decision("unauthorized", "no_secret")
    if not verify(forge, headers, body, secret):
        present = has_signature(forge, headers)
        return Decision("unauthorized", "bad_signature" if present else "missing_signature")
    return parse_push(forge, headers, body, branch)
