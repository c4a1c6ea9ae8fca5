"""An unfriendly client reaching the listener directly: stalled connections, huge heads and
floods of bad signatures neither starve valid hooks nor grow memory nor flood the log."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from support.daemon import DaemonProcess, http_get, post_github_push
from support.supervisord import free_port
from test_webhooks import SECRET, Harness, read_all, signed_request

from watcher.daemon.http_head import MAX_HEAD_BYTES, MAX_HEADERS, HeadError, head_end, parse_head


@pytest.fixture
def server() -> Iterator[Harness]:
    """A listener with the daemon's defaults (10 s client timeout, default bounds)."""
    h = Harness().start()
    yield h
    assert h.server is not None
    h.server.stop()


def exchange(addr: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(addr, timeout=5) as conn:
        conn.sendall(data)
        return read_all(conn)


def test_32_stalled_connections_starve_neither_hooks_nor_healthz(server: Harness) -> None:
    """With 32 clients stalled mid-head or mid-body, 25 validly signed hooks all get 202 and
    /healthz 200, each at once (it was 503 for 24 of the 25)."""
    stalled = [socket.create_connection(server.addr, timeout=5) for _ in range(32)]
    try:
        for i, conn in enumerate(stalled):
            conn.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: t\r\nContent-Le" if i % 2 else
                         b"POST /hooks/github HTTP/1.1\r\nContent-Length: 900\r\n\r\n{")
        time.sleep(0.3)
        for _ in range(25):
            started = time.monotonic()
            assert exchange(server.addr, signed_request()).startswith(b"HTTP/1.1 202 ")
            assert time.monotonic() - started < 1.0
        assert exchange(server.addr, b"GET /healthz HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 200 ")
        assert server.hints == ["github"] * 25
    finally:
        for conn in stalled:
            conn.close()


@pytest.mark.parametrize("head", [
    b"POST /hooks/github HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n",
    b"POST /hooks/github HTTP/1.1\r\n" + b"X-A: b\r\n" * (MAX_HEADERS + 1) + b"\r\n",
    b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 4000 + b"\r\n" * 0 + b"\r\n" * 0
    + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 3000) for i in range(6)) + b"\r\n",
])
def test_total_header_bytes_are_bounded(server: Harness, head: bytes) -> None:
    """A head over 16 KiB in all (however it is split into lines) or over 64 headers gets
    431, without a hint."""
    assert exchange(server.addr, head).startswith(b"HTTP/1.1 431 ")
    assert server.hints == []


def test_a_head_that_never_ends_is_cut_at_the_bound(server: Harness) -> None:
    """A client streaming header lines without end (100 KB, never a blank line) gets 431:
    the server stops at 16 KiB instead of waiting for the end."""
    with socket.create_connection(server.addr, timeout=5) as conn:

        def send() -> None:
            with contextlib.suppress(OSError):
                conn.sendall(b"POST /hooks/github HTTP/1.1\r\n")
                for _ in range(100):
                    conn.sendall(b"X-Filler: " + b"f" * 1000 + b"\r\n")

        sender = threading.Thread(target=send)
        sender.start()
        answer = read_all(conn)
        sender.join()
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_401s_are_logged_at_a_bounded_rate(server: Harness) -> None:
    """200 hooks with a bad signature are all answered 401 and counted, but give at most
    20 log lines a minute."""
    _, body = b"", b'{"ref": "refs/heads/main"}'
    bad = (b"POST /hooks/generic HTTP/1.1\r\nX-Signature: sha256=" + b"0" * 64
           + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    with capture_logs() as logs:
        for _ in range(200):
            assert exchange(server.addr, bad).startswith(b"HTTP/1.1 401 ")
    rejected = [e for e in logs if e["event"] == "webhook.rejected"]
    assert 1 <= len(rejected) <= 20
    assert 'watcher_webhooks_total{forge="generic",result="unauthorized"} 200.0' in \
        server.metrics.render().decode()


# -- the demonstrated load against the real daemon -----------------------------------------
class _Box:
    """Just what DaemonProcess needs of a site: a directory and a config file."""

    def __init__(self, base: Path, port: int) -> None:
        self.base, self.config = base, base / "watcher.toml"
        (base / "secret").write_text(SECRET.decode() + "\n")
        self.config.write_text(f"""
[app]
name = "abuse"
root = "{base / 'app'}"
[git]
remote = "{base / 'no-such-remote.git'}"
interval = "1h"
[supervisor]
url = "unix://{base / 'no.sock'}"
programs = ["app"]
[webhook]
listen = "127.0.0.1:{port}"
secret_file = "{base / 'secret'}"
""")


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


def big_header_client(port: int, results: list[Any]) -> None:
    """100 headers of 64 KB each, as fast as the server takes them."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"POST /hooks/github HTTP/1.1\r\n")
            for i in range(100):
                conn.sendall(b"X-H%d: %s\r\n" % (i, b"h" * 64000))
            conn.sendall(b"\r\n")
            results.append(read_all(conn)[:12])
    except OSError as exc:  # the server answered 431 and closed while we were sending
        results.append(type(exc).__name__)


def test_daemon_rss_stays_under_80_mb_under_32_huge_head_clients(tmp_path: Path) -> None:
    """`watcher run` under 32 clients each sending 100 headers of 64 KB keeps its peak RSS
    under 80 MB (it reached 362 MB), and still answers a signed hook and /healthz."""
    port = free_port()
    with DaemonProcess(_Box(tmp_path, port)) as daemon:  # type: ignore[arg-type]
        daemon.wait_for("check.failed")
        base = rss_mb(daemon.pid, "VmRSS")
        results: list[Any] = []
        clients = [threading.Thread(target=big_header_client, args=(port, results))
                   for _ in range(32)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(timeout=60)
        peak = rss_mb(daemon.pid, "VmHWM")
        print(f"daemon RSS: {base:.1f} MB before, peak {peak:.1f} MB under the load")
        assert len(results) == 32
        assert peak < 80, f"peak RSS {peak:.1f} MB"
        assert post_github_push(port, SECRET.decode(), sha="1" * 40) == 202
        assert http_get(port, "/healthz")[0] == 200


# -- fuzzing the head parser, alone and through the socket --------------------------------
token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1,
                max_size=20)
value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60).map(
    lambda v: v.strip(" \t"))


@settings(max_examples=500, deadline=None, database=None)
@given(data=st.binary(max_size=2000) | st.lists(
    st.sampled_from([b"GET ", b"POST ", b"/hooks/github", b" HTTP/1.1", b"HTTP/1.0", b"\r\n",
                     b"\n", b": ", b":", b"Content-Length", b" ", b"\t", b"\x00", b"\xff",
                     b"X-A", b"0", b"-1", b"\r"]), max_size=60).map(b"".join))
def test_parse_head_takes_any_bytes(data: bytes) -> None:
    """Whatever the bytes, parsing gives a Head or a HeadError with a 4xx status, nothing
    else, and a head never keeps a control character in a header value."""
    end = head_end(data)
    try:
        head = parse_head(data[:end] if end else data)
    except HeadError as exc:
        assert 400 <= exc.status < 500
        return
    assert head.target.startswith("/")
    for name, val in head.headers:
        assert name and not any(ord(c) < 0x20 and c != "\t" for c in val)


@settings(max_examples=300, deadline=None, database=None)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       path=st.from_regex(r"/[a-z0-9/._-]{0,30}", fullmatch=True),
       headers=st.lists(st.tuples(token, value), max_size=20),
       newline=st.sampled_from(["\r\n", "\n"]))
def test_parse_head_round_trips_valid_heads(method: str, path: str,
                                            headers: list[tuple[str, str]],
                                            newline: str) -> None:
    """A well-formed head parses back to its method, target and headers, in order."""
    text = newline.join([f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)])
    data = (text + newline + newline).encode("latin-1")
    assert head_end(data) == len(data)
    head = parse_head(data)
    assert (head.method, head.target, head.version) == (method, path, "HTTP/1.1")
    assert list(head.headers) == headers


@pytest.fixture(scope="module")
def shared_server() -> Iterator[Harness]:
    h = Harness().start(client_timeout=1.0)
    yield h
    assert h.server is not None
    h.server.stop()


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(st.sampled_from(
    [b"GET ", b"POST ", b"/healthz", b"/hooks/github", b" HTTP/1.1", b"\r\n", b"\n", b": ",
     b"Content-Length: 2", b"Expect: 100-continue", b"Transfer-Encoding: chunked", b"{}",
     b"X-Hub-Signature-256: sha256=00", b"\x00", b"\xff", b" ", b"a" * 5000]), max_size=40)
    .map(b"".join))
def test_any_head_bytes_get_a_4xx_or_2xx_and_never_a_hint(shared_server: Harness,
                                                          data: bytes) -> None:
    """Random head bytes over a real socket: the answer is nothing (a head that never ended)
    or a 1xx/2xx/4xx, never a 5xx, never a hint; /healthz keeps answering."""
    with socket.create_connection(shared_server.addr, timeout=5) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        answer = read_all(conn)
    if answer:
        assert answer.startswith(b"HTTP/1.1 ")
        assert answer[9:10] in b"124", answer[:40]
    assert shared_server.hints == []
    with socket.create_connection(shared_server.addr, timeout=5) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert read_all(conn).startswith(b"HTTP/1.1 200 ")
