"""The health wait of step 12 against a real HTTP server playing scripted answers: counted
5xx end it after `health.failures` in a row, "not ready yet" keeps it waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from watcher.config import Config
from watcher.config_load import build
from watcher.errors import ConfigError, StepFailed
from watcher.parts.health import classify, wait_healthy

NEW, OLD = "a" * 40, "b" * 40


class Script:
    """Answers in order; the last one repeats. (status, body), or None: close the socket."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, str] | None] = [(200, "ok")]
        self.served = 0

    def next(self) -> tuple[int, str] | None:
        answer = self.answers[min(self.served, len(self.answers) - 1)]
        self.served += 1
        return answer


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer = script.next()
            if answer is None:
                self.close_connection = True
                self.wfile.flush()
                self.connection.close()
                return
            status, body = answer
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/healthz", script
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(("status", "body", "expect", "old", "kind"), [
    (200, f"ok {NEW}", NEW, OLD, "healthy"),
    (200, "ok", None, None, "healthy"),
    (200, f"ok {OLD}", NEW, OLD, "old"),
    (500, f"error in {OLD}", NEW, OLD, "old"),
    (500, "Server Error", NEW, OLD, "counted"),
    (502, "Bad Gateway", NEW, None, "counted"),
    (503, "", None, None, "counted"),
    (200, "ok other", NEW, OLD, "bad"),
    (404, "Not Found", NEW, OLD, "bad"),
])
def test_classify(status: int, body: str, expect: str | None, old: str | None,
                  kind: str) -> None:
    """Each answer is healthy, counted (a 5xx from the new release), the old release (not
    ready yet) or another failure of the new release."""
    assert classify(status, body, expect, old) == kind


def test_consecutive_5xx_end_the_wait_at_once(server: tuple[str, Script]) -> None:
    """Three 5xx answers in a row fail the step within a fraction of the timeout."""
    url, script = server
    script.answers = [(500, "Server Error")]
    started = time.monotonic()
    with pytest.raises(StepFailed) as err:
        wait_healthy(url, timeout=20, expect=NEW, old=OLD, failures=3, interval=0.2)
    took = time.monotonic() - started
    assert "failed 3 times in a row" in err.value.message and "HTTP 500" in err.value.message
    assert script.served == 3
    assert took < 2.0, took


def test_old_release_and_refusals_keep_waiting(server: tuple[str, Script]) -> None:
    """The old release answering (even with 5xx) and dropped connections do not count: the
    wait goes on until the new release answers healthy."""
    url, script = server
    script.answers = [(200, f"ok {OLD}"), (500, f"err {OLD}"), None, (200, f"ok {OLD}"),
                      (500, f"err {OLD}"), None, (200, f"ok {NEW}")]
    took = wait_healthy(url, timeout=20, expect=NEW, old=OLD, failures=2, interval=0.05)
    assert script.served == 7
    assert took < 10


def test_not_ready_answers_do_not_break_a_streak_but_others_do(
        server: tuple[str, Script]) -> None:
    """A 404 from the new release resets the count; an old answer between two 5xx does not."""
    url, script = server
    script.answers = [(500, "x"), (404, "nf"), (500, "x"), (200, f"ok {OLD}"), (500, "x"),
                      (500, "x")]
    with pytest.raises(StepFailed) as err:
        wait_healthy(url, timeout=20, expect=NEW, old=OLD, failures=3, interval=0.05)
    assert "3 times in a row" in err.value.message
    assert script.served == 6


def test_without_expect_any_5xx_counts(server: tuple[str, Script]) -> None:
    """Without expect_revision every 5xx after the reload counts."""
    url, script = server
    script.answers = [(503, "down")]
    with pytest.raises(StepFailed):
        wait_healthy(url, timeout=20, failures=2, interval=0.05)
    assert script.served == 2


def test_failures_zero_waits_for_the_timeout(server: tuple[str, Script]) -> None:
    """With fail-fast off the wait lasts the whole timeout and names the last answer."""
    url, script = server
    script.answers = [(500, "Server Error")]
    started = time.monotonic()
    with pytest.raises(StepFailed) as err:
        wait_healthy(url, timeout=0.6, expect=NEW, failures=0, interval=0.1)
    assert time.monotonic() - started >= 0.5
    assert "unhealthy after 0.6s: HTTP 500" in err.value.message


# -- config: health.failures and health.smoke_paths ---------------------------------------
def _config(**health: object) -> Config:
    raw = {"app": {"name": "mysite", "root": "/srv/mysite"},
           "git": {"remote": "git@github.com:acme/mysite.git"},
           "supervisor": {"programs": ["mysite"]}, "health": health}
    return build(raw, Path("/etc/watcher/t.toml"), {})


def test_health_config_defaults_and_values() -> None:
    """failures defaults to 3 and smoke_paths to none; both are read from [health]."""
    assert (_config().health.failures, _config().health.smoke_paths) == (3, ())
    c = _config(url="http://127.0.0.1:8000/healthz", failures=5, smoke_paths=["/", "/login/"])
    assert (c.health.failures, c.health.smoke_paths) == (5, ("/", "/login/"))


@pytest.mark.parametrize(("health", "needle"), [
    ({"failures": 0}, "health.failures must be at least 1"),
    ({"smoke_paths": ["/"]}, "health.smoke_paths needs health.url"),
    ({"url": "http://h/healthz", "smoke_paths": ["login/"]}, "'login/' must be a path"),
    ({"url": "http://h/healthz", "smoke_paths": ["//evil/"]}, "'//evil/' must be a path"),
    ({"url": "ftp://h/healthz"}, "health.url must be an http:// or https:// URL"),
])
def test_health_config_errors_name_the_key(health: dict[str, object], needle: str) -> None:
    """Bad health.failures / smoke_paths / url values are refused, naming key and file."""
    with pytest.raises(ConfigError) as err:
        _config(**health)
    assert needle in str(err.value) and "/etc/watcher/t.toml" in str(err.value)
