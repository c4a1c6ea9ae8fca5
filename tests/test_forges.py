"""Tables for watcher.daemon.forges: signatures per forge, push payloads as forges send them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from watcher.daemon import forges
from watcher.daemon.forges import Decision

SECRET = b"forge-test-secret"
BRANCH = "main"
SHA = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
ZERO = "0" * 40


def body_of(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def sig(body: bytes, secret: bytes = SECRET) -> str:
    return forges.sign(secret, body)


GITHUB_VECTOR_SECRET = b"It's a Secret to Everybody"
GITHUB_VECTOR_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
PAYLOAD = body_of({"ref": "refs/heads/main"})

VERIFY_CASES = [
    # (id, forge, headers, body, secret, expected)
    ("github-published-vector", "github", {"X-Hub-Signature-256": GITHUB_VECTOR_SIG},
     b"Hello, World!", GITHUB_VECTOR_SECRET, True),
    ("github-vector-body-changed", "github", {"X-Hub-Signature-256": GITHUB_VECTOR_SIG},
     b"Hello, World?", GITHUB_VECTOR_SECRET, False),
    ("github-vector-signature-changed", "github",
     {"X-Hub-Signature-256": GITHUB_VECTOR_SIG[:-1] + "8"},
     b"Hello, World!", GITHUB_VECTOR_SECRET, False),
    ("github-vector-wrong-secret", "github", {"X-Hub-Signature-256": GITHUB_VECTOR_SIG},
     b"Hello, World!", b"It's a Secret to Everybody!", False),
    ("github-header-name-any-case", "github", {"x-hub-signature-256": "sha256=" + sig(PAYLOAD)},
     PAYLOAD, SECRET, True),
    ("github-uppercase-hex", "github", {"X-Hub-Signature-256": "sha256=" + sig(PAYLOAD).upper()},
     PAYLOAD, SECRET, True),
    ("github-missing-header", "github", {}, PAYLOAD, SECRET, False),
    ("github-sha1-header-only", "github", {"X-Hub-Signature": "sha256=" + sig(PAYLOAD)},
     PAYLOAD, SECRET, False),
    ("github-sha1-scheme", "github", {"X-Hub-Signature-256": "sha1=" + sig(PAYLOAD)},
     PAYLOAD, SECRET, False),
    ("github-bare-hex", "github", {"X-Hub-Signature-256": sig(PAYLOAD)}, PAYLOAD, SECRET, False),
    ("github-no-secret", "github", {"X-Hub-Signature-256": "sha256=" + sig(PAYLOAD, b"")},
     PAYLOAD, b"", False),
    ("github-non-ascii-header", "github", {"X-Hub-Signature-256": "sha256=\u00e9\u00e9"},
     PAYLOAD, SECRET, False),
    ("gitlab-token", "gitlab", {"X-Gitlab-Token": SECRET.decode()}, PAYLOAD, SECRET, True),
    ("gitlab-wrong-token", "gitlab", {"X-Gitlab-Token": "forge-test-secreT"}, PAYLOAD, SECRET,
     False),
    ("gitlab-token-prefix", "gitlab", {"X-Gitlab-Token": "forge-test"}, PAYLOAD, SECRET, False),
    ("gitlab-missing-token", "gitlab", {}, PAYLOAD, SECRET, False),
    ("gitlab-empty-token-empty-secret", "gitlab", {"X-Gitlab-Token": ""}, PAYLOAD, b"", False),
    ("gitea-bare-hex", "gitea", {"X-Gitea-Signature": sig(PAYLOAD)}, PAYLOAD, SECRET, True),
    ("forgejo-bare-hex", "gitea", {"X-Forgejo-Signature": sig(PAYLOAD)}, PAYLOAD, SECRET, True),
    ("gitea-prefixed-is-wrong", "gitea", {"X-Gitea-Signature": "sha256=" + sig(PAYLOAD)},
     PAYLOAD, SECRET, False),
    ("gitea-other-body", "gitea", {"X-Gitea-Signature": sig(b"{}")}, PAYLOAD, SECRET, False),
    ("bitbucket-sha256", "bitbucket", {"X-Hub-Signature": "sha256=" + sig(PAYLOAD)},
     PAYLOAD, SECRET, True),
    ("bitbucket-github-header-is-wrong", "bitbucket",
     {"X-Hub-Signature-256": "sha256=" + sig(PAYLOAD)}, PAYLOAD, SECRET, False),
    ("generic-sha256", "generic", {"X-Signature": "sha256=" + sig(PAYLOAD)}, PAYLOAD, SECRET,
     True),
    ("generic-empty-body", "generic", {"X-Signature": "sha256=" + sig(b"")}, b"", SECRET, True),
    ("generic-bad", "generic", {"X-Signature": "sha256=" + "0" * 64}, PAYLOAD, SECRET, False),
    ("trigger-sha256", "trigger", {"X-Signature": "sha256=" + sig(PAYLOAD)}, PAYLOAD, SECRET,
     True),
]


@pytest.mark.parametrize(
    ("forge", "headers", "body", "secret", "expected"),
    [case[1:] for case in VERIFY_CASES],
    ids=[case[0] for case in VERIFY_CASES],
)
def test_verify(forge: str, headers: dict[str, str], body: bytes, secret: bytes,
                expected: bool) -> None:
    """Each forge's signature scheme accepts exactly the right HMAC or token over the raw body."""
    assert forges.verify(forge, headers, body, secret) is expected


def gh(event: str, **payload: Any) -> tuple[str, dict[str, str], bytes]:
    return "github", {"X-GitHub-Event": event}, body_of(payload)


def gl(**payload: Any) -> tuple[str, dict[str, str], bytes]:
    return "gitlab", {"X-Gitlab-Event": "Push Hook"}, body_of(payload)


def gt(event: str, header: str = "X-Gitea-Event", **payload: Any,
       ) -> tuple[str, dict[str, str], bytes]:
    return "gitea", {header: event}, body_of(payload)


def bb(key: str, *news: Any) -> tuple[str, dict[str, str], bytes]:
    changes = [{"new": new, "old": {"type": "branch", "name": "main"}} for new in news]
    return "bitbucket", {"X-Event-Key": key}, body_of({"push": {"changes": changes}})


def gen(payload: Any) -> tuple[str, dict[str, str], bytes]:
    return "generic", {}, payload if isinstance(payload, bytes) else body_of(payload)


def bb_branch(name: str, kind: str = "branch") -> dict[str, Any]:
    return {"type": kind, "name": name, "target": {"hash": SHA, "type": "commit"}}


PUSH_CASES: list[tuple[str, tuple[str, dict[str, str], bytes], str, str]] = [
    # (id, (forge, headers, body), outcome, a word the reason contains)
    ("github-push", gh("push", ref="refs/heads/main", after=SHA, deleted=False), "queued", ""),
    ("github-other-branch", gh("push", ref="refs/heads/dev", after=SHA), "ignored", "dev"),
    ("github-tag", gh("push", ref="refs/tags/v1.0", after=SHA), "ignored", "tag v1.0"),
    ("github-deleted", gh("push", ref="refs/heads/main", after=ZERO, deleted=True), "ignored",
     "deleted"),
    ("github-ping", gh("ping", zen="Keep it logically awesome.", hook_id=1), "ignored", "ping"),
    ("github-issues", gh("issues", action="opened"), "ignored", "issues"),
    ("github-prefix-branch", gh("push", ref="refs/heads/main-old", after=SHA), "ignored",
     "main-old"),
    ("github-no-event", ("github", {}, body_of({"ref": "refs/heads/main"})), "malformed",
     "X-GitHub-Event"),
    ("github-no-ref", gh("push", after=SHA), "malformed", "ref"),
    ("github-ref-not-string", gh("push", ref=["refs/heads/main"]), "malformed", "ref"),
    ("gitlab-push", gl(object_kind="push", ref="refs/heads/main", after=SHA,
                       checkout_sha=SHA), "queued", ""),
    ("gitlab-other-branch", gl(object_kind="push", ref="refs/heads/feature/x", after=SHA),
     "ignored", "feature/x"),
    ("gitlab-tag-push", gl(object_kind="tag_push", ref="refs/tags/v2"), "ignored", "tag"),
    ("gitlab-deleted", gl(object_kind="push", ref="refs/heads/main", after=ZERO,
                          checkout_sha=None), "ignored", "deleted"),
    ("gitlab-merge-request", gl(object_kind="merge_request"), "ignored", "merge_request"),
    ("gitlab-no-kind", gl(ref="refs/heads/main"), "malformed", "object_kind"),
    ("gitea-push", gt("push", ref="refs/heads/main", after=SHA), "queued", ""),
    ("forgejo-push", gt("push", "X-Forgejo-Event", ref="refs/heads/main", after=SHA),
     "queued", ""),
    ("gitea-other-branch", gt("push", ref="refs/heads/dev", after=SHA), "ignored", "dev"),
    ("gitea-tag", gt("push", ref="refs/tags/v3", after=SHA), "ignored", "tag v3"),
    ("gitea-create", gt("create", ref="main", ref_type="branch"), "ignored", "create"),
    ("gitea-no-event", ("gitea", {}, body_of({"ref": "refs/heads/main"})), "malformed",
     "X-Gitea-Event"),
    ("bitbucket-push", bb("repo:push", bb_branch("main")), "queued", ""),
    ("bitbucket-other-branch", bb("repo:push", bb_branch("dev")), "ignored", "dev"),
    ("bitbucket-tag", bb("repo:push", bb_branch("v1", "tag")), "ignored", "tag v1"),
    ("bitbucket-deleted", bb("repo:push", None), "ignored", "deleted"),
    ("bitbucket-many-changes", bb("repo:push", bb_branch("dev"), bb_branch("main")), "queued",
     ""),
    ("bitbucket-ping", ("bitbucket", {"X-Event-Key": "diagnostics:ping"}, b"{}"), "ignored",
     "ping"),
    ("bitbucket-pullrequest", bb("pullrequest:created"), "ignored", "pullrequest"),
    ("bitbucket-no-changes-list", ("bitbucket", {"X-Event-Key": "repo:push"},
                                   body_of({"push": {}})), "malformed", "push.changes"),
    ("bitbucket-new-not-object", bb("repo:push", "main"), "malformed", "new"),
    ("bitbucket-no-key", ("bitbucket", {}, body_of({"push": {"changes": []}})), "malformed",
     "X-Event-Key"),
    ("generic-empty-body", gen(b""), "queued", ""),
    ("generic-no-ref", gen({}), "queued", ""),
    ("generic-ref", gen({"ref": "refs/heads/main"}), "queued", ""),
    ("generic-bare-ref", gen({"ref": "main"}), "queued", ""),
    ("generic-branch", gen({"branch": "main"}), "queued", ""),
    ("generic-other-branch", gen({"branch": "dev"}), "ignored", "dev"),
    ("generic-tag", gen({"ref": "refs/tags/v1"}), "ignored", "tag"),
    ("generic-ref-not-string", gen({"ref": 5}), "malformed", "ref"),
    ("generic-branch-empty", gen({"branch": ""}), "malformed", "branch"),
    ("trigger-any-body", ("trigger", {}, b"not json at all"), "queued", ""),
]


@pytest.mark.parametrize(
    ("request_", "outcome", "reason_word"),
    [case[1:] for case in PUSH_CASES],
    ids=[case[0] for case in PUSH_CASES],
)
def test_parse_push(request_: tuple[str, dict[str, str], bytes], outcome: str,
                    reason_word: str) -> None:
    """A push to the configured branch queues a check; anything else says why it is ignored."""
    forge, headers, body = request_
    decision = forges.parse_push(forge, headers, body, BRANCH)
    assert decision.outcome == outcome
    assert reason_word in decision.reason


BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b'["refs/heads/main"]', "not a JSON object"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
    (b"", "not valid JSON"),
]


@pytest.mark.parametrize("forge", ["github", "gitlab", "gitea", "bitbucket", "generic"])
@pytest.mark.parametrize(("body", "reason"), BAD_BODIES,
                         ids=["bad", "array", "utf8", "deep", "empty"])
def test_malformed_bodies(forge: str, body: bytes, reason: str) -> None:
    """Bodies that are not a JSON object are malformed for every forge (generic may be empty)."""
    headers = {"X-GitHub-Event": "push", "X-Gitea-Event": "push", "X-Event-Key": "repo:push"}
    decision = forges.parse_push(forge, headers, body, BRANCH)
    if forge == "generic" and body == b"":
        assert decision == forges.QUEUED
    else:
        assert decision == Decision("malformed", f"body is {reason}")


def test_judge_checks_the_signature_before_the_body() -> None:
    """A bad signature is unauthorized even when the body is not JSON: nothing is parsed first."""
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "1" * 64}
    assert forges.judge("github", headers, b"{nope", SECRET, BRANCH) == Decision(
        "unauthorized", "bad_signature")
    assert forges.judge("github", {"X-GitHub-Event": "push"}, b"{nope", SECRET, BRANCH) == (
        Decision("unauthorized", "missing_signature"))
    signed = {**headers, "X-Hub-Signature-256": "sha256=" + sig(b"{nope")}
    assert forges.judge("github", signed, b"{nope", SECRET, BRANCH).outcome == "malformed"


def test_judge_without_secret_is_unauthorized() -> None:
    """With no secret every request is refused, even one signed with the empty key."""
    body = body_of({"ref": "refs/heads/main"})
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sig(body, b"")}
    assert forges.judge("github", headers, body, b"", BRANCH) == Decision(
        "unauthorized", "no_secret")


def test_unknown_forge_is_a_programming_error() -> None:
    """An unknown forge name raises instead of silently verifying nothing."""
    with pytest.raises(ValueError, match="unknown forge"):
        forges.verify("sourcehut", {}, b"", SECRET)
    with pytest.raises(ValueError, match="unknown forge"):
        forges.parse_push("sourcehut", {}, b"{}", BRANCH)


def test_long_refs_are_shortened_in_reasons() -> None:
    """A huge ref name cannot blow up the response body or the log line."""
    _, headers, body = gh("push", ref="refs/heads/" + "x" * 10_000)
    decision = forges.parse_push("github", headers, body, BRANCH)
    assert decision.outcome == "ignored"
    assert len(decision.reason) < 300


# -- issue 14: with git.tag_pattern, a matching tag push is the hint ---------------------------
TAGGED = forges.watched("main", "v*")


@pytest.mark.parametrize(("request_", "queued"), [
    (gh("push", ref="refs/tags/v1.10.0", after="a" * 40), True),
    (gh("push", ref="refs/tags/nightly", after="a" * 40), False),
    (gh("push", ref="refs/tags/v1.10.0", after="0" * 40), False),  # tag deleted
    (gh("push", ref="refs/heads/main", after="a" * 40), False),  # the branch is not deployed
    (gl(object_kind="tag_push", ref="refs/tags/v2.0.0", after="a" * 40), True),
    (gt("push", ref="refs/tags/v2.0.0", after="a" * 40), True),
    (bb("repo:push", bb_branch("v3.1.0", "tag")), True),
    (bb("repo:push", bb_branch("main")), False),
    (gen({"ref": "refs/tags/v1.0.0"}), True),
])
def test_tag_pushes_are_hints_with_a_tag_pattern(request_: tuple[str, dict[str, str], bytes],
                                                 queued: bool) -> None:
    """With `git.tag_pattern = "v*"`, a push of a matching tag queues a check on every forge;
    other tags, deleted tags and branch pushes are ignored."""
    forge, headers, body = request_
    assert (forges.parse_push(forge, headers, body, TAGGED) == forges.QUEUED) is queued
    assert forges.watched("main", "") == "main"
