"""The report document, its four formats and its delivery, against a real HTTP server."""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from support.logapi import LogAPI

from watcher.delivery.formats import render
from watcher.delivery.http import Reporter, ReportTarget
from watcher.delivery.record import Commit, ErrorInfo, Report, StepResult, new_report_id
from watcher.delivery.spool import Spool

TOKEN = "canary-7f3a9c2e51d84b06-TOKEN"
DESIGN_FIELDS = [
    "id", "app", "host", "event", "outcome", "from_sha", "to_sha", "release", "started_at",
    "finished_at", "duration_s", "steps", "error", "commits", "migrations_applied",
    "watcher_version", "trigger", "actor", "warnings", "migrations_reversed", "tag",
]
BUDGET_S = 1.0
TIMEOUT_S = 0.3


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def make_report(outcome: str = "succeeded", tail: str = "") -> Report:
    finished = datetime.now(timezone.utc)
    failed = outcome != "succeeded"
    return Report(
        id=new_report_id(), app="mysite", host="web1", event="deploy", outcome=outcome,
        from_sha="a" * 40, to_sha="b" * 40, release="20261128T034500Z-bbbbbbbbbbbb",
        started_at=_iso(finished - timedelta(seconds=42)), finished_at=_iso(finished),
        duration_s=42.0,
        steps=(StepResult("fetch", "ok", 1.5), StepResult("migrate", "failed" if failed else "ok",
                                                           3.25)),
        error=ErrorInfo("migrate", "exit 1", tail or "Traceback...\nboom") if failed else None,
        commits=(Commit("b" * 40, "Ada", "Add invoices"),),
        migrations_applied=("billing.0007_invoice",), watcher_version="0.1.0",
    )


@pytest.fixture
def api() -> Iterator[LogAPI]:
    with LogAPI(slow_s=2.0) as server:
        yield server


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "report_token"
    path.write_text(TOKEN + "\n")
    return path


def reporter(api: LogAPI, tmp_path: Path, token_file: Path | None, fmt: str = "json",
             url: str | None = None, budget_s: float = BUDGET_S) -> Reporter:
    target = ReportTarget(url=api.url if url is None else url,
                          token_file=str(token_file) if token_file else "", format=fmt,
                          timeout_s=TIMEOUT_S, budget_s=budget_s)
    return Reporter(target, tmp_path / ".watcher" / "spool")


def spooled(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / ".watcher" / "spool").glob("*.json"))


def test_json_report_has_every_design_field_and_a_bearer_token(
    api: LogAPI, tmp_path: Path, token_file: Path
) -> None:
    """The json format POSTs the DESIGN §7 document as is, with `Authorization: Bearer`."""
    report = make_report("failed")
    assert reporter(api, tmp_path, token_file).send(report) is True
    [req] = api.requests
    assert req.method == "POST" and req.path == "/ingest"
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.headers["content-type"] == "application/json"
    assert list(req.json) == DESIGN_FIELDS
    assert req.json["steps"][1] == {"name": "migrate", "outcome": "failed", "duration_s": 3.25}
    assert req.json["error"] == {"step": "migrate", "message": "exit 1",
                                 "output_tail": "Traceback...\nboom"}
    assert req.json["commits"] == [{"sha": "b" * 40, "author": "Ada", "subject": "Add invoices"}]
    assert req.json["migrations_applied"] == ["billing.0007_invoice"]
    assert make_report().to_dict()["error"] is None
    assert spooled(tmp_path) == []


def test_slack_message_shape(api: LogAPI, tmp_path: Path, token_file: Path) -> None:
    """Slack gets `text` plus section/fields/context blocks within Slack's limits, no token."""
    report = make_report("rolled_back", tail="x" * 5000 + "<end>")
    assert reporter(api, tmp_path, token_file, fmt="slack").send(report)
    [req] = api.requests
    assert "authorization" not in req.headers
    body = req.json
    assert "mysite" in body["text"] and "rolled_back" in body["text"]
    assert "aaaaaaa -&gt; bbbbbbb" in body["text"] and "42.0s" in body["text"]  # mrkdwn-escaped
    types = [block["type"] for block in body["blocks"]]
    assert types == ["section", "section", "section", "context"]
    assert body["blocks"][0]["text"]["type"] == "mrkdwn"
    assert [f["text"] for f in body["blocks"][1]["fields"]] == [
        "*fetch*\nok, 1.5s", "*migrate*\nfailed, 3.2s"]
    error_text = body["blocks"][2]["text"]["text"]
    assert len(error_text) <= 3000 and error_text.endswith("&lt;end&gt;```")
    assert report.id in body["blocks"][3]["elements"][0]["text"]
    assert api.delivered_ids() == [report.id]


def test_betterstack_event_shape(api: LogAPI, tmp_path: Path, token_file: Path) -> None:
    """Better Stack gets one object with `dt` (RFC 3339), `message` and the document's fields."""
    report = make_report()
    assert reporter(api, tmp_path, token_file, fmt="betterstack").send(report)
    [req] = api.requests
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.json["dt"] == report.finished_at
    assert req.json["message"].startswith("mysite deploy succeeded on web1")
    assert {k: req.json[k] for k in DESIGN_FIELDS} == report.to_dict()


def test_betterstack_dt_of_a_late_report_is_the_send_time() -> None:
    """A report delivered long after it finished is stamped with the send time (the API
    keeps only recent event times); `finished_at` still says when it happened."""
    doc = make_report().to_dict()
    later = datetime.now(timezone.utc) + timedelta(hours=3)
    body, _ = render(doc, "betterstack", now=later)
    assert b'"dt":"' + later.isoformat().replace("+00:00", "Z").encode() in body
    assert doc["finished_at"].encode() in body


def test_datadog_log_shape(api: LogAPI, tmp_path: Path, token_file: Path) -> None:
    """Datadog gets an array of one log with reserved attributes and a DD-API-KEY header."""
    report = make_report("failed")
    assert reporter(api, tmp_path, token_file, fmt="datadog").send(report)
    [req] = api.requests
    assert req.headers["dd-api-key"] == TOKEN
    assert "authorization" not in req.headers
    assert isinstance(req.json, list) and len(req.json) == 1
    log = req.json[0]
    assert (log["ddsource"], log["service"], log["hostname"], log["status"]) == (
        "watcher", "mysite", "web1", "error")
    assert {"app:mysite", "outcome:failed"} <= set(log["ddtags"].split(","))
    assert "failed at migrate" in log["message"]
    assert log["watcher"] == report.to_dict()


def test_token_is_read_at_each_send(api: LogAPI, tmp_path: Path, token_file: Path) -> None:
    """Rotating the token file between two sends takes effect without a restart."""
    rep = reporter(api, tmp_path, token_file)
    assert rep.send(make_report())
    token_file.write_text("rotated-token-0123456789\n")
    assert rep.send(make_report())
    assert [r.headers["authorization"] for r in api.requests] == [
        f"Bearer {TOKEN}", "Bearer rotated-token-0123456789"]


@pytest.mark.parametrize("fault", ["refused", "5xx", "slow"])
def test_unreachable_api_spools_then_flush_delivers_each_once_in_order(
    api: LogAPI, tmp_path: Path, token_file: Path, fault: str
) -> None:
    """Refused, 503 or timing out: send returns False within budget and spools; once the API
    is back, flush delivers every report once, oldest first, and empties the spool."""
    rep = reporter(api, tmp_path, token_file)
    if fault == "refused":
        api.refuse()
    else:
        api.mode = fault
    reports = [make_report(), make_report("failed"), make_report()]
    for report in reports:
        started = time.monotonic()
        assert rep.send(report) is False
        assert time.monotonic() - started < BUDGET_S + TIMEOUT_S + 0.5
    assert len(spooled(tmp_path)) == 3
    assert api.delivered_ids() == []
    api.accept()
    api.mode = "ok"
    assert rep.flush() == 3
    assert api.delivered_ids() == [r.id for r in reports]
    assert spooled(tmp_path) == []
    assert rep.flush() == 0
    assert len(api.delivered_ids()) == 3


def test_a_new_report_is_delivered_after_the_spooled_ones(
    api: LogAPI, tmp_path: Path, token_file: Path
) -> None:
    """send() first flushes older spooled reports, so the API sees them in order."""
    rep = reporter(api, tmp_path, token_file)
    api.mode = "5xx"
    older = [make_report(), make_report()]
    for report in older:
        assert rep.send(report) is False
    api.mode = "ok"
    newest = make_report()
    assert rep.send(newest) is True
    assert api.delivered_ids() == [r.id for r in [*older, newest]]
    assert spooled(tmp_path) == []


def test_a_transient_error_is_retried_within_one_send(
    api: LogAPI, tmp_path: Path, token_file: Path
) -> None:
    """A 503 followed by recovery inside the budget is retried with backoff and delivered."""
    api.mode = "5xx"
    threading.Timer(0.4, lambda: setattr(api, "mode", "ok")).start()
    with capture_logs() as events:
        assert reporter(api, tmp_path, token_file, budget_s=4.0).send(make_report())
    assert len(api.requests) >= 2
    assert len(api.delivered_ids()) == 1
    assert any(e["event"] == "report.retry" and e["error"] == "HTTP 503" for e in events)


def test_401_is_not_retried_but_spooled_with_the_status_logged(
    api: LogAPI, tmp_path: Path, token_file: Path
) -> None:
    """A bad token (401) is tried once, logged with its status, and the report kept."""
    api.mode = "401"
    rep = reporter(api, tmp_path, token_file)
    report = make_report()
    with capture_logs() as events:
        assert rep.send(report) is False
    assert len(api.requests) == 1
    [failed] = [e for e in events if e["event"] == "report.failed"]
    assert failed["status"] == 401 and failed["log_level"] == "error"
    assert "token_file" in failed["hint"]
    api.mode = "ok"
    assert rep.flush() == 1
    assert api.delivered_ids() == [report.id]


def test_a_report_the_api_refuses_as_malformed_is_set_aside(
    api: LogAPI, tmp_path: Path, token_file: Path
) -> None:
    """A report the API refuses as malformed (400) moves to *.rejected, kept on disk, instead
    of blocking the reports behind it."""
    rep = reporter(api, tmp_path, token_file)
    api.mode = "400"
    poisoned = make_report()
    assert rep.send(poisoned) is False
    assert rep.flush() == 0
    assert spooled(tmp_path) == []
    [rejected] = (tmp_path / ".watcher" / "spool").glob("*.rejected")
    assert poisoned.id in rejected.name
    api.mode = "ok"
    later = make_report()
    assert rep.send(later) is True
    assert api.delivered_ids() == [later.id]


def test_a_busy_spool_queues_the_report_instead_of_waiting(
    api: LogAPI, tmp_path: Path, token_file: Path
) -> None:
    """While another sender holds the spool lock, send() spools at once, keeping the order."""
    rep = reporter(api, tmp_path, token_file)
    holder = Spool(tmp_path / ".watcher" / "spool", max_bytes=1 << 20)
    report = make_report()
    with holder.exclusive() as held:
        assert held
        assert rep.send(report) is False
    assert api.requests == []
    assert rep.flush() == 1
    assert api.delivered_ids() == [report.id]


def test_spool_files_and_dir_are_private(api: LogAPI, tmp_path: Path, token_file: Path) -> None:
    """The reporter's spool dir is 0700 and each spooled report is 0600."""
    api.mode = "401"
    assert reporter(api, tmp_path, token_file).send(make_report()) is False
    directory = tmp_path / ".watcher" / "spool"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    [path] = spooled(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_token_leaks_nowhere(api: LogAPI, tmp_path: Path, token_file: Path) -> None:
    """The token (even inside an output tail) and a webhook URL's secret path appear in no
    log event, spool file or body, through 401s, refusals, 5xx and a corrupt token file."""
    tail = f"export REPORT_TOKEN={TOKEN}\nFAILED"
    rep = reporter(api, tmp_path, token_file)
    slack_url = api.url.replace("/ingest", "/services/T000/B000/SlackSecretPath")
    slack = reporter(api, tmp_path, token_file, fmt="slack", url=slack_url)
    events: list[Any] = []
    with capture_logs() as captured:
        for mode in ("401", "5xx"):
            api.mode = mode
            assert rep.send(make_report("failed", tail)) is False
            assert slack.send(make_report("failed", tail)) is False
        api.refuse()
        assert rep.send(make_report("failed", tail)) is False
        assert slack.send(make_report("failed", tail)) is False
        api.accept()
        api.mode = "ok"
        token_file.write_text(TOKEN[:10] + "\n" + TOKEN[10:])  # would inject a header line
        assert rep.send(make_report("failed", tail)) is False
        token_file.write_text(TOKEN)
        assert rep.send(make_report("failed", tail)) is True
        assert slack.send(make_report("failed", tail)) is True
        events = list(captured)
    assert events
    for secret in (TOKEN, TOKEN[10:], "SlackSecretPath"):
        assert secret not in repr(events)
        for path in (tmp_path / ".watcher" / "spool").iterdir():
            if path.is_file():
                assert secret.encode() not in path.read_bytes()
    for req in api.requests:
        assert TOKEN.encode() not in req.body
    assert any("[redacted]" in r.body.decode() for r in api.requests)


def test_reporting_off_sends_and_spools_nothing(api: LogAPI, tmp_path: Path) -> None:
    """An empty url turns reporting off: send is a no-op returning True, flush returns 0."""
    rep = reporter(api, tmp_path, None, url="")
    assert rep.send(make_report()) is True
    assert rep.flush() == 0
    assert api.requests == []
    assert not (tmp_path / ".watcher").exists()


def test_report_ids_sort_by_creation_time() -> None:
    """new_report_id() is unique and sorts in creation order, even within one clock tick."""
    ids = [new_report_id() for _ in range(2000)]
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_report_is_on_disk_while_it_is_being_sent(
    api: LogAPI, tmp_path: Path, token_file: Path
) -> None:
    """The report is spooled before the POST, so a watcher killed mid-send loses nothing."""
    api.mode = "slow"
    api.slow_s = 1.5
    rep = reporter(api, tmp_path, token_file)
    report = make_report()
    sender = threading.Thread(target=rep.send, args=(report,))
    sender.start()
    seen_during_send = False
    while sender.is_alive():
        if any(report.id in p.name for p in (tmp_path / ".watcher" / "spool").glob("*.json")):
            seen_during_send = True
            break
        time.sleep(0.01)
    sender.join()
    assert seen_during_send
