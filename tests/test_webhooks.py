"""The webhook listener against real sockets on 127.0.0.1: forges, limits, slow clients, logs."""

from __future__ import annotations

import http.client
import json
import socket
import string
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from watcher.daemon import forges
from watcher.daemon.metrics import Metrics
from watcher.daemon.webhooks import WebhookServer, send_trigger
from watcher.errors import ConfigError, TransientError

SECRET = b"canary-webhook-secret-5f1e"
TRIGGER_KEY = b"canary-trigger-key-77aa"
BRANCH = "main"
SHA = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
FORGE_NAMES = ("github", "gitlab", "gitea", "bitbucket", "generic")


@dataclass
class Harness:
    """A running server plus what its providers return and what it called back."""

    secret: bytes | None = SECRET
    trigger_key: bytes | None = TRIGGER_KEY
    healthy: bool = True
    hints: list[str] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    server: WebhookServer | None = None

    def hint(self, source: str) -> None:
        self.hints.append(source)

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self.healthy, {"live": SHA[:12], "healthy": self.healthy}

    def start(self, **kwargs: Any) -> Harness:
        self.server = WebhookServer(
            "127.0.0.1:0", BRANCH, lambda: self.secret, self.hint, self.health, self.metrics,
            lambda: self.trigger_key, **kwargs)
        self.server.start()
        return self

    @property
    def addr(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.address

    def url(self, path: str) -> str:
        return f"http://{self.addr[0]}:{self.addr[1]}{path}"

    def post(self, path: str, headers: dict[str, str], body: bytes) -> requests.Response:
        return requests.post(self.url(path), data=body, headers=headers, timeout=5)


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness().start(client_timeout=2.0)
    yield h
    assert h.server is not None
    h.server.stop()


def push(forge: str, branch: str = BRANCH, secret: bytes = SECRET) -> tuple[dict[str, str], bytes]:
    """Headers and body of a push to `branch`, shaped and signed the way `forge` sends them."""
    ref = f"refs/heads/{branch}"
    mac = forges.sign(secret, b"")  # replaced below once the body is known
    if forge == "github":
        body = {"ref": ref, "before": "0" * 40, "after": SHA, "created": False, "deleted": False}
        headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "72d3162e"}
    elif forge == "gitlab":
        body = {"object_kind": "push", "event_name": "push", "ref": ref, "after": SHA,
                "checkout_sha": SHA}
        headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret.decode()}
    elif forge == "gitea":
        body = {"ref": ref, "before": "0" * 40, "after": SHA, "commits": []}
        headers = {"X-Gitea-Event": "push", "X-Gitea-Delivery": "f6266f16"}
    elif forge == "bitbucket":
        new = {"type": "branch", "name": branch, "target": {"type": "commit", "hash": SHA}}
        body = {"push": {"changes": [{"new": new, "old": None, "created": True}]}}
        headers = {"X-Event-Key": "repo:push", "X-Request-UUID": "4f0c0f0e"}
    else:
        body, headers = {"ref": ref}, {}
    raw = json.dumps(body).encode()
    mac = forges.sign(secret, raw)
    headers["Content-Type"] = "application/json"
    if forge == "github":
        headers["X-Hub-Signature-256"] = f"sha256={mac}"
    elif forge == "gitea":
        headers["X-Gitea-Signature"] = mac
    elif forge == "bitbucket":
        headers["X-Hub-Signature"] = f"sha256={mac}"
    elif forge == "generic":
        headers["X-Signature"] = f"sha256={mac}"
    return headers, raw


def raw_exchange(addr: tuple[str, int], data: bytes, timeout: float = 3.0) -> bytes:
    """Send raw bytes, read until the server closes (or `timeout`)."""
    with socket.create_connection(addr, timeout=timeout) as conn:
        conn.sendall(data)
        return read_all(conn)


def read_all(conn: socket.socket) -> bytes:
    out = b""
    while chunk := conn.recv(65536):
        out += chunk
    return out


@pytest.mark.parametrize("forge", FORGE_NAMES)
def test_valid_push_is_queued(harness: Harness, forge: str) -> None:
    """A signed push to the configured branch answers 202 and hints the daemon once."""
    headers, body = push(forge)
    response = harness.post(f"/hooks/{forge}", headers, body)
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert harness.hints == [forge]


def test_forgejo_signature_header(harness: Harness) -> None:
    """Forgejo's X-Forgejo-Signature and X-Forgejo-Event work on /hooks/gitea."""
    headers, body = push("gitea")
    headers = {"X-Forgejo-Event": "push", "X-Forgejo-Signature": headers["X-Gitea-Signature"]}
    assert harness.post("/hooks/gitea", headers, body).status_code == 202
    assert harness.hints == ["gitea"]


@pytest.mark.parametrize("forge", FORGE_NAMES)
def test_other_branch_is_ignored(harness: Harness, forge: str) -> None:
    """A push to another branch answers 200 with the reason and no hint."""
    headers, body = push(forge, branch="develop")
    response = harness.post(f"/hooks/{forge}", headers, body)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert "develop" in response.json()["reason"]
    assert harness.hints == []


def test_ping_is_ignored(harness: Harness) -> None:
    """GitHub's ping and Bitbucket's diagnostics:ping answer 200 ignored."""
    body = json.dumps({"zen": "Design for failure.", "hook_id": 1}).encode()
    gh = {"X-GitHub-Event": "ping", "X-Hub-Signature-256": "sha256=" + forges.sign(SECRET, body)}
    bb = {"X-Event-Key": "diagnostics:ping", "X-Hub-Signature": gh["X-Hub-Signature-256"]}
    for path, headers in (("/hooks/github", gh), ("/hooks/bitbucket", bb)):
        response = harness.post(path, headers, body)
        assert (response.status_code, response.json()["reason"]) == (200, "ping")
    assert harness.hints == []


@pytest.mark.parametrize("forge", FORGE_NAMES)
def test_bad_or_missing_signature_is_401(harness: Harness, forge: str) -> None:
    """A wrong secret, a tampered body or no signature answers 401 and never hints."""
    headers, body = push(forge, secret=b"not-the-secret")
    assert harness.post(f"/hooks/{forge}", headers, body).status_code == 401
    headers, body = push(forge)
    if forge != "gitlab":  # GitLab sends the secret itself as a token: nothing signs the body
        assert harness.post(f"/hooks/{forge}", headers, body + b" ").status_code == 401
    signature_names = ("X-Hub-Signature-256", "X-Gitlab-Token", "X-Gitea-Signature",
                       "X-Hub-Signature", "X-Signature")
    unsigned = {k: v for k, v in headers.items() if k not in signature_names}
    response = harness.post(f"/hooks/{forge}", unsigned, body)
    assert (response.status_code, response.json()["reason"]) == (401, "missing_signature")
    assert harness.hints == []


@pytest.mark.parametrize("secret", [None, b"", b"\n"])
def test_no_secret_refuses_every_forge(harness: Harness, secret: bytes | None) -> None:
    """With no secret configured every hook and the trigger answer 401, said once in the log."""
    harness.secret = harness.trigger_key = secret
    with capture_logs() as logs:
        for forge in FORGE_NAMES:
            headers, body = push(forge, secret=b"")
            response = harness.post(f"/hooks/{forge}", headers, body)
            assert (response.status_code, response.json()["reason"]) == (401, "no_secret")
            assert harness.post(f"/hooks/{forge}", *push(forge)).status_code == 401
        assert harness.post("/trigger", {}, b"").status_code == 401
    assert harness.hints == []
    warnings = [e["what"] for e in logs if e["event"] == "webhook.no_secret"]
    assert warnings == ["webhook secret", "trigger key"]


def test_secret_rotation_needs_no_restart(harness: Harness) -> None:
    """The provider is asked at each request: a new secret works at once, the old one stops."""
    harness.secret = b"rotated-secret"
    assert harness.post("/hooks/github", *push("github")).status_code == 401
    headers, body = push("github", secret=b"rotated-secret")
    assert harness.post("/hooks/github", headers, body).status_code == 202


def test_secret_file_with_trailing_newline(harness: Harness) -> None:
    """A secret read from a file ending in a newline is the secret without it."""
    harness.secret = SECRET + b"\n"
    assert harness.post("/hooks/github", *push("github")).status_code == 202


def test_unreadable_secret_refuses(harness: Harness) -> None:
    """A provider that raises (unreadable file) means 401, never an open door or a 500."""
    def broken() -> bytes:
        raise PermissionError("/etc/watcher/webhook_secret")
    assert harness.server is not None
    harness.server._providers["webhook secret"] = broken
    assert harness.post("/hooks/github", *push("github")).status_code == 401


def test_malformed_json_with_valid_signature_is_400(harness: Harness) -> None:
    """A correctly signed body that is not JSON answers 400 and does not hint."""
    body = b'{"ref": "refs/heads/main"'
    headers = {"X-GitHub-Event": "push",
               "X-Hub-Signature-256": "sha256=" + forges.sign(SECRET, body)}
    response = harness.post("/hooks/github", headers, body)
    assert response.status_code == 400
    assert "JSON" in response.json()["reason"]
    assert harness.hints == []


def test_wrong_method_is_405_with_allow(harness: Harness) -> None:
    """GET on a hook path is 405 Allow: POST; POST on /healthz is 405 Allow: GET."""
    response = requests.get(harness.url("/hooks/github"), timeout=5)
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")
    response = requests.put(harness.url("/trigger"), data=b"x", timeout=5)
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")
    response = requests.post(harness.url("/healthz"), data=b"", timeout=5)
    assert (response.status_code, response.headers["Allow"]) == (405, "GET")


@pytest.mark.parametrize("path", ["/", "/hooks", "/hooks/", "/hooks/sourcehut", "/hooks/github/",
                                  "/HOOKS/github", "/healthz/x"])
def test_unknown_path_is_404(harness: Harness, path: str) -> None:
    """Paths outside the table answer 404 whatever the method."""
    assert requests.get(harness.url(path), timeout=5).status_code == 404
    assert harness.post(path, *push("github")).status_code == 404


def test_query_string_is_ignored_for_routing(harness: Harness) -> None:
    """`/hooks/github?x=1` is the GitHub hook (some setups add a query for their own routing)."""
    assert harness.post("/hooks/github?source=ci", *push("github")).status_code == 202


def test_missing_content_length_is_411(harness: Harness) -> None:
    """A POST without Content-Length, or a chunked one, answers 411 Length Required."""
    request = b"POST /hooks/github HTTP/1.1\r\nHost: t\r\nX-GitHub-Event: push\r\n\r\n"
    assert raw_exchange(harness.addr, request).startswith(b"HTTP/1.1 411 ")
    chunked = (b"POST /hooks/github HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\n{}\r\n0\r\n\r\n")
    assert raw_exchange(harness.addr, chunked).startswith(b"HTTP/1.1 411 ")


@pytest.mark.parametrize("length", [b"abc", b"-1", b"1e3", b"12, 13", b"\xd9\xa3"])
def test_bad_content_length_is_400(harness: Harness, length: bytes) -> None:
    """A Content-Length that is not one plain decimal number answers 400."""
    request = b"POST /hooks/github HTTP/1.1\r\nHost: t\r\nContent-Length: %s\r\n\r\n{}" % length
    assert raw_exchange(harness.addr, request).startswith(b"HTTP/1.1 400 ")


def test_body_shorter_than_content_length_is_400(harness: Harness) -> None:
    """A client that half-closes before sending the declared length gets 400."""
    with socket.create_connection(harness.addr, timeout=3) as conn:
        conn.sendall(b"POST /hooks/generic HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{}")
        conn.shutdown(socket.SHUT_WR)
        assert read_all(conn).startswith(b"HTTP/1.1 400 ")


def test_oversized_body_is_413_without_reading_it(harness: Harness) -> None:
    """Content-Length of 2 MiB is refused from the headers alone, at once, and the connection
    closed: the server does not wait for (or buffer) the body."""
    with socket.create_connection(harness.addr, timeout=3) as conn:
        conn.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: t\r\nX-GitHub-Event: push\r\n"
                     b"Content-Length: 2097152\r\n\r\n" + b'{"ref": ')
        started = time.monotonic()
        head = conn.recv(65536)
        assert time.monotonic() - started < 1.0
        assert head.startswith(b"HTTP/1.1 413 ")
        assert b"Connection: close" in head
        conn.settimeout(2.5)
        while conn.recv(65536):  # the server closes on its own
            pass
    assert harness.hints == []


def test_expect_100_continue(harness: Harness) -> None:
    """`Expect: 100-continue` gets 100 only after the headers pass, then the real answer."""
    headers, body = push("generic")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(harness.addr, timeout=3) as conn:
        conn.sendall(f"POST /hooks/generic HTTP/1.1\r\nHost: t\r\n{head}Expect: 100-continue\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        assert conn.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.sendall(body)
        assert read_all(conn).startswith(b"HTTP/1.1 202 ")
    big = b"POST /hooks/generic HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9999999\r\n\r\n"
    assert raw_exchange(harness.addr, big).startswith(b"HTTP/1.1 413 ")


def test_stalled_client_does_not_block_others(harness: Harness) -> None:
    """A client that sends half a request and waits neither delays a valid hook nor stays
    connected past the client timeout."""
    stalled = [socket.create_connection(harness.addr, timeout=5) for _ in range(2)]
    stalled[0].sendall(b"POST /hooks/github HTTP/1.1\r\nHost: t\r\nContent-Le")
    stalled[1].sendall(b"POST /hooks/github HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"ref\":")
    try:
        started = time.monotonic()
        assert harness.post("/hooks/github", *push("github")).status_code == 202
        assert time.monotonic() - started < 1.0
        # client_timeout is 2 s: the server gives up on both and closes them.
        assert read_all(stalled[0]) == b""
        assert read_all(stalled[1]).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 4.0
    finally:
        for conn in stalled:
            conn.close()


def test_trickling_client_is_cut_off_at_the_total_deadline() -> None:
    """A client sending a byte every little while is closed after `client_timeout` in all."""
    h = Harness().start(client_timeout=0.6)
    try:
        with socket.create_connection(h.addr, timeout=5) as conn:
            started, cut_after = time.monotonic(), None
            for byte in b"POST /hooks/github HTTP/1.1\r\nX-Padding: " + b"a" * 100:
                try:
                    conn.send(bytes([byte]))
                except OSError:  # the server closed: reset, then broken pipe
                    cut_after = time.monotonic() - started
                    break
                time.sleep(0.1)
            assert cut_after is not None
            assert cut_after < 2.0
    finally:
        assert h.server is not None
        h.server.stop()


def test_idle_connections_at_the_bound_make_room_for_a_valid_hook() -> None:
    """With every connection slot held by clients that sent nothing, a valid hook still gets
    202 at once: the oldest idle connection is dropped for it."""
    h = Harness().start(client_timeout=5.0, max_clients=2)
    idle = [socket.create_connection(h.addr, timeout=5) for _ in range(2)]
    try:
        time.sleep(0.3)  # both accepted
        started = time.monotonic()
        assert raw_exchange(h.addr, signed_request()).startswith(b"HTTP/1.1 202 ")
        assert time.monotonic() - started < 1.0
        assert read_all(idle[0]) == b""  # the oldest was dropped
        assert h.hints == ["github"]
    finally:
        for conn in idle:
            conn.close()
        assert h.server is not None
        h.server.stop()


def test_over_the_bound_with_bodies_in_flight_is_503_at_once() -> None:
    """With every slot holding a request whose body is still arriving, a new request gets
    503 quickly; slots come back when those end."""
    h = Harness().start(client_timeout=5.0, max_clients=2)
    held = [socket.create_connection(h.addr, timeout=5) for _ in range(2)]
    try:
        for conn in held:
            conn.sendall(b"POST /hooks/github HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        time.sleep(0.3)
        started = time.monotonic()
        assert raw_exchange(h.addr, signed_request()).startswith(b"HTTP/1.1 503 ")
        assert time.monotonic() - started < 1.0
        for conn in held:
            conn.close()
        deadline = time.monotonic() + 3
        while raw_exchange(h.addr, signed_request()).startswith(b"HTTP/1.1 503 "):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert h.hints == ["github"]
    finally:
        for conn in held:
            conn.close()
        assert h.server is not None
        h.server.stop()


def signed_request(forge: str = "github") -> bytes:
    headers, body = push(forge)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST /hooks/{forge} HTTP/1.1\r\nHost: t\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_healthz(harness: Harness) -> None:
    """/healthz is 200 with the provider's JSON when healthy and 503 when not."""
    response = requests.get(harness.url("/healthz"), timeout=5)
    assert (response.status_code, response.json()["healthy"]) == (200, True)
    harness.healthy = False
    response = requests.get(harness.url("/healthz"), timeout=5)
    assert (response.status_code, response.json()["healthy"]) == (503, False)


def test_metrics_endpoint(harness: Harness) -> None:
    """/metrics serves the registry in Prometheus text format, webhook counts included."""
    harness.post("/hooks/github", *push("github"))
    harness.post("/hooks/gitlab", *push("gitlab", secret=b"wrong"))
    harness.metrics.live_revision(SHA)
    response = requests.get(harness.url("/metrics"), timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    for name in ("watcher_checks_total", "watcher_deploys_total",
                 "watcher_deploy_duration_seconds_bucket",
                 "watcher_last_success_timestamp_seconds", "watcher_live_revision_info",
                 "watcher_webhooks_total"):
        assert name in text
    assert 'watcher_webhooks_total{forge="github",result="queued"} 1.0' in text
    assert 'watcher_webhooks_total{forge="gitlab",result="unauthorized"} 1.0' in text
    assert f'watcher_live_revision_info{{sha="{SHA}"}} 1.0' in text


def test_trigger_endpoint(harness: Harness) -> None:
    """/trigger with the key's HMAC hints "trigger"; a wrong or missing key is 401."""
    body = b'{"source": "test"}'
    good = {"X-Signature": "sha256=" + forges.sign(TRIGGER_KEY, body)}
    assert harness.post("/trigger", good, body).status_code == 202
    assert harness.post("/trigger", {"X-Signature": "sha256=" + forges.sign(SECRET, body)},
                        body).status_code == 401
    assert harness.post("/trigger", {}, body).status_code == 401
    assert harness.hints == ["trigger"]


def test_send_trigger(harness: Harness) -> None:
    """The CLI's client gets 202 with the right key (newline and all) and 401 with a wrong one."""
    listen = f"{harness.addr[0]}:{harness.addr[1]}"
    assert send_trigger(listen, TRIGGER_KEY + b"\n") == 202
    assert send_trigger(listen, b"wrong-key") == 401
    assert harness.hints == ["trigger"]


def test_send_trigger_without_daemon_is_transient() -> None:
    """Nothing listening: send_trigger raises TransientError naming the address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransientError, match=f"127.0.0.1:{port}"):
        send_trigger(f"127.0.0.1:{port}", TRIGGER_KEY, timeout=1.0)


def test_busy_port_is_a_config_error(harness: Harness) -> None:
    """Binding an address already in use fails with a ConfigError naming [webhook] listen."""
    other = WebhookServer(f"127.0.0.1:{harness.addr[1]}", BRANCH, lambda: SECRET, print,
                          lambda: (True, {}), Metrics(), lambda: None)
    with pytest.raises(ConfigError, match=r"\[webhook\] listen"):
        other.start()
    with pytest.raises(ConfigError, match="host:port"):
        WebhookServer("localhost", BRANCH, lambda: SECRET, print, lambda: (True, {}), Metrics(),
                      lambda: None).start()


def test_logs_never_hold_secret_signature_or_body(harness: Harness) -> None:
    """Accepted and rejected requests log forge and reason, never the secret, key, signature
    or body."""
    headers, body = push("github")
    secrets = [SECRET.decode(), TRIGGER_KEY.decode(), headers["X-Hub-Signature-256"][7:],
               body.decode(), SHA]
    with capture_logs() as logs:
        harness.post("/hooks/github", headers, body)
        harness.post("/hooks/github", headers, body + b"x")
        harness.post("/hooks/gitlab", *push("gitlab"))
        harness.post("/hooks/gitlab", *push("gitlab", secret=SECRET + b"x"))
        harness.post("/trigger", {"X-Signature": "sha256=" + forges.sign(TRIGGER_KEY, b"")}, b"")
    events = [(e["event"], e.get("forge"), e.get("reason")) for e in logs]
    assert ("webhook.accepted", "github", "hint queued") in events
    assert ("webhook.rejected", "github", "bad_signature") in events
    assert ("webhook.rejected", "gitlab", "bad_signature") in events
    text = repr(logs)
    for secret in secrets:
        assert secret not in text


def test_stop_is_idempotent_and_frees_the_port() -> None:
    """After stop() the port is closed; a second stop() does nothing."""
    h = Harness().start()
    addr = h.addr
    assert h.server is not None
    h.server.stop()
    h.server.stop()
    with pytest.raises(OSError):
        socket.create_connection(addr, timeout=1).close()


def test_metrics_live_revision_replaces_the_old_sha() -> None:
    """live_revision keeps exactly one sha series at 1; deploy() and check() validate labels."""
    m = Metrics()
    m.live_revision("a" * 40)
    m.live_revision("b" * 40)
    text = m.render().decode()
    assert f'sha="{"b" * 40}"' in text
    assert "a" * 40 not in text
    m.deploy("succeeded", 42.0, at=1_700_000_000.0)
    m.check("deployed")
    text = m.render().decode()
    assert "watcher_last_success_timestamp_seconds 1.7e+09" in text
    assert 'watcher_checks_total{result="deployed"} 1.0' in text
    assert 'watcher_deploy_duration_seconds_bucket{le="60.0"} 1.0' in text
    with pytest.raises(ValueError, match="check result"):
        m.check("exploded")
    with pytest.raises(ValueError, match="deploy outcome"):
        m.deploy("maybe", 1.0)
    assert "watcher_checks_total" in Metrics().render().decode()  # registries are separate


# --- property test: random requests against a running server --------------------------------

SIGNATURE_HEADERS = {
    "X-Hub-Signature-256": ("github",),
    "X-Gitlab-Token": ("gitlab",),
    "X-Gitea-Signature": ("gitea",),
    "X-Forgejo-Signature": ("gitea",),
    "X-Hub-Signature": ("bitbucket",),
    "X-Signature": ("generic", "trigger"),
}
EVENT_HEADERS = {
    "X-GitHub-Event": ["push", "ping", "issues"],
    "X-Gitea-Event": ["push", "create"],
    "X-Forgejo-Event": ["push"],
    "X-Event-Key": ["repo:push", "diagnostics:ping"],
    "X-Gitlab-Event": ["Push Hook"],
}
PATHS = [*(f"/hooks/{f}" for f in FORGE_NAMES), "/trigger", "/healthz", "/metrics", "/",
         "/hooks/", "/hooks/github/x"]
KEYS = {"trigger": TRIGGER_KEY}


def valid_signature(header: str, body: bytes, secret: bytes) -> str:
    if header == "X-Gitlab-Token":
        return secret.decode()
    mac = forges.sign(secret, body)
    return mac if header in ("X-Gitea-Signature", "X-Forgejo-Signature") else f"sha256={mac}"


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80)
push_bodies = st.sampled_from([push(f, branch=b)[1] for f in FORGE_NAMES for b in ("main", "dev")]
                              + [b"", b"{}", b"[]", b"{", b'{"zen": "ping"}'])


OWN_HEADERS = {  # the header a source signs with, and its event header for a push
    "github": ("X-Hub-Signature-256", "X-GitHub-Event", "push"),
    "gitlab": ("X-Gitlab-Token", "X-Gitlab-Event", "Push Hook"),
    "gitea": ("X-Gitea-Signature", "X-Gitea-Event", "push"),
    "bitbucket": ("X-Hub-Signature", "X-Event-Key", "repo:push"),
    "generic": ("X-Signature", "X-Padding", ""),
    "trigger": ("X-Signature", "X-Padding", ""),
}


@st.composite
def random_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    source = draw(st.sampled_from(sorted(OWN_HEADERS)))
    if draw(st.integers(0, 3)):  # mostly a POST to an endpoint, so signatures get exercised
        method, path = "POST", "/trigger" if source == "trigger" else f"/hooks/{source}"
    else:
        method = draw(st.sampled_from(["POST", "GET", "PUT", "DELETE", "HEAD", "OPTIONS"])
                      | st.from_regex(r"[A-Z]{1,10}", fullmatch=True))
        path = draw(st.sampled_from(PATHS) | st.text(
            string.ascii_letters + string.digits + "/-_.?=&%", max_size=30).map(lambda p: "/" + p))
    body = draw(st.just(push(source)[1]) | push_bodies | st.binary(max_size=300))
    names = draw(st.lists(st.sampled_from(sorted(SIGNATURE_HEADERS)), unique=True, max_size=2))
    own_signature, own_event, push_event = OWN_HEADERS[source]
    if draw(st.booleans()):
        names.append(own_signature)
    headers: dict[str, str] = {}
    for name in names:
        kind = draw(st.sampled_from(["valid", "valid", "trigger", "wrong-body", "garbage"]))
        if kind == "garbage":
            headers[name] = draw(header_text)
        else:
            key = TRIGGER_KEY if kind == "trigger" else SECRET
            signed = body + b"!" if kind == "wrong-body" else body
            headers[name] = valid_signature(name, signed, key)
    for name in draw(st.lists(st.sampled_from(sorted(EVENT_HEADERS)), unique=True, max_size=2)):
        headers[name] = draw(st.sampled_from(EVENT_HEADERS[name]) | header_text)
    if draw(st.booleans()):
        headers[own_event] = push_event
    return method, path, headers, body


@pytest.fixture(scope="module")
def shared() -> Iterator[Harness]:
    h = Harness().start(client_timeout=2.0)
    yield h
    assert h.server is not None
    h.server.stop()


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=random_requests())
def test_random_requests_never_5xx_and_never_hint_unsigned(
        shared: Harness, request: tuple[str, str, dict[str, str], bytes]) -> None:
    """Whatever the method, path, headers and body: no 5xx, and a hint only when the body
    carries a valid signature for the path's forge."""
    method, path, headers, body = request
    before = len(shared.hints)
    conn = http.client.HTTPConnection(*shared.addr, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    event(f"{response.status} {'hint' if len(shared.hints) > before else 'no hint'}")
    assert response.status < 500
    if len(shared.hints) > before:
        source = {"/trigger": "trigger"}.get(path, path.removeprefix("/hooks/").split("?")[0])
        key = KEYS.get(source, SECRET)
        assert method == "POST"
        assert response.status == 202
        assert any(source in forges_ and headers.get(name) == valid_signature(name, body, key)
                   for name, forges_ in SIGNATURE_HEADERS.items())


def test_hints_are_thread_safe_under_parallel_posts(harness: Harness) -> None:
    """Twenty concurrent valid hooks all get 202 and each hints exactly once."""
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status = harness.post("/hooks/github", *push("github")).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [202] * 20
    assert len(harness.hints) == 20
