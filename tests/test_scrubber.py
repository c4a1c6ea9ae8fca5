"""The log scrubber blanks the userinfo of URLs of any scheme wherever text leaves watcher:
log lines, step output in reports and mails, status text. Fuzzed with hypothesis."""

from __future__ import annotations

import io
import json
import re
import string
from pathlib import Path

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from support.configs import minimal_config

from watcher import log
from watcher.config import server_name
from watcher.config_load import load
from watcher.engine.journal import Journal, Run
from watcher.engine.steps import StepLog
from watcher.log import MASK, scrub
from watcher.parts.releases import Layout
from watcher.parts.state import StateFile


@pytest.mark.parametrize(("text", "expected"), [
    ("redis://:pass@host:6379/0", "redis://***@host:6379/0"),
    ("postgres://app:pa/ss@db/site", "postgres://***@db/site"),
    ("https://bob:p@ss@host/x", "https://***@host/x"),
    ("amqp://guest:gu:est@mq//", "amqp://***@mq//"),
    ("mysql://root@db", "mysql://***@db"),
    ("fetch from ssh://deploy:s3cr3t@git.example.com/a.git failed",
     "fetch from ssh://***@git.example.com/a.git failed"),
    ('{"url": "smtp://u:p@mail:587"}', '{"url": "smtp://***@mail:587"}'),
    ("git@github.com:acme/site.git", "git@github.com:acme/site.git"),
    ("https://example.com/healthz", "https://example.com/healthz"),
    ("mail ops@example.com", "mail ops@example.com"),
])
def test_userinfo_of_any_scheme_is_masked(text: str, expected: str) -> None:
    """The forms the review found passing (empty user, `/` or `@` in the password) are
    masked whole; text without credentials is left alone."""
    assert scrub(text) == expected


SCHEMES = st.from_regex(r"[a-z][a-z0-9+.-]{0,9}", fullmatch=True)
# userinfo as people write it: anything but whitespace and quotes, `@ / : ? #` included
USERINFO = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF,
                                 blacklist_categories=("Zs", "Zl", "Zp", "Cc"),
                                 blacklist_characters="\"'<>`"), min_size=1, max_size=80)
HOST = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}(:[0-9]{1,5})?", fullmatch=True)
PATH = st.from_regex(r"(/[A-Za-z0-9._~%!$&()*+,;=:-]{0,20}){0,4}", fullmatch=True)
AROUND = st.text(string.ascii_letters + string.digits + " .,;()[]{}=-_", max_size=40)
SPACE = st.sampled_from([" ", "\n", "\t", "'", '"', "<"])


@settings(max_examples=400, deadline=None, database=None)
@given(scheme=SCHEMES, userinfo=USERINFO, host=HOST, path=PATH, before=AROUND, after=AROUND,
       left=SPACE, right=SPACE)
def test_fuzzed_urls_lose_their_userinfo_and_keep_the_rest(
        scheme: str, userinfo: str, host: str, path: str, before: str, after: str,
        left: str, right: str) -> None:
    """Any scheme, any userinfo (with `@`, `/`, `:` inside), in any surrounding text: the
    userinfo becomes `***` and everything else is kept as it was."""
    text = f"{before}{left}{scheme}://{userinfo}@{host}{path}{right}{after}"
    assert scrub(text) == f"{before}{left}{scheme}://{MASK}@{host}{path}{right}{after}"


LEFTOVER = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://(?!\*\*\*@)[^\s\"'<>`]{1,200}@")


@settings(max_examples=400, deadline=None, database=None)
@given(text=st.text(max_size=300) | st.lists(st.sampled_from(
    ["://", "@", ":", "/", " ", "a", "redis", "https", "'", "\n", "x:y", "***", "@@"]),
    max_size=60).map("".join))
def test_no_userinfo_survives_any_text(text: str) -> None:
    """For any text: scrubbing never raises, is idempotent, and leaves no `scheme://x@`
    whose userinfo is not the mask."""
    once = scrub(text)
    assert scrub(once) == once
    assert not LEFTOVER.search(once)


def test_log_lines_reports_and_status_are_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    """A URL with credentials in a log event's value, nested in a list or dict, or in an
    exception, comes out masked in the rendered JSON line."""
    out = io.StringIO()
    log.configure(stream=out, json=True)
    try:
        structlog.get_logger().warning(
            "x", url="redis://:canary-pw@r:6379", urls=["postgres://a:canary/pw@db"],
            nested={"u": "https://u:canary@pw@h"}, error=ValueError("amqp://g:canary-pw@mq"))
    finally:
        log.configure(stream=io.StringIO())
    line = out.getvalue()
    assert "canary" not in line
    event = json.loads(line)
    assert event["url"] == "redis://***@r:6379"
    assert event["urls"] == ["postgres://***@db"]
    assert event["nested"] == {"u": "https://***@h"}


def test_report_warnings_are_scrubbed_and_name_the_fleet_host(tmp_path: Path) -> None:
    """A warning carrying a URL with credentials (a contract migration's error, say) leaves
    the journal masked; with [fleet] the report's host is fleet.host, as in /metrics."""
    config = minimal_config(tmp_path, '[fleet]\nredis_url = "redis://127.0.0.1:6379/0"\n'
                                      'host = "web-7"\n')
    cfg = load(config, environ={})
    journal = Journal(cfg, Layout(cfg.app.root), StateFile(cfg.state_dir / "state.json"))
    run = Run(event="deploy", from_sha=None, to_sha="b" * 40, steps=StepLog())
    run.warnings.append("contract migrations failed: postgres://app:canary-pw@db/site down")
    doc = journal._report(run, "succeeded", "r1", None).to_dict()
    assert doc["warnings"] == ["contract migrations failed: postgres://***@db/site down"]
    assert doc["host"] == "web-7" == server_name(cfg)
