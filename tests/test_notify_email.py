"""Failure mails ([notify.email]) against a real SMTP server (aiosmtpd, with AUTH and STARTTLS)
and a real HTTP server standing in for a Postmark-shaped email API."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from support.configs import minimal_config
from support.logapi import LogAPI
from support.services import SMTPServer

from watcher.config import EmailConfig
from watcher.config_load import load
from watcher.delivery.mail import EmailNotifier
from watcher.delivery.record import Commit, ErrorInfo, Report, StepResult, new_report_id
from watcher.engine.journal import Journal
from watcher.errors import ConfigError
from watcher.parts.releases import Layout
from watcher.parts.state import StateFile

PASSWORD = "canary-smtp-pass-83b1e0f4"
USER = "watcher@example.com"



# Every mail is spooled first and sent from the spool; these are that bookkeeping.
BOOKKEEPING = {"spool.put", "email.spooled", "email.flushed", "spool.rejected"}


def outcome_events(logs: list[dict[str, Any]]) -> list[str]:
    """The events that tell what became of a mail, without the spool's bookkeeping."""
    return [e["event"] for e in logs if e["event"] not in BOOKKEEPING]

def make_report(outcome: str = "failed", message: str = "migrate exited 1") -> Report:
    failed = outcome != "succeeded"
    return Report(
        id=new_report_id(), app="mysite", host="web1", event="deploy", outcome=outcome,
        from_sha="a" * 40, to_sha="b" * 40, release="20261128T034500Z-aaaaaaaaaaaa",
        started_at="2026-11-28T03:45:00.000Z", finished_at="2026-11-28T03:45:42.000Z",
        duration_s=42.0, steps=(StepResult("migrate", "failed" if failed else "ok", 3.2),),
        error=ErrorInfo("migrate", message, "Traceback\nRuntimeError: boom") if failed else None,
        commits=(Commit("b" * 40, "Ada", "Add invoices"),),
        migrations_applied=("billing.0007_invoice",), watcher_version="0.1.0",
    )


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp_password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.fixture
def smtp_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SMTPServer]:
    """STARTTLS with a self-signed certificate that the client is told to trust."""
    with SMTPServer(users={USER: PASSWORD}, tls_dir=tmp_path) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert))
        yield server


def notifier(tmp_path: Path, password_file: Path, budget_s: float = 3.0,
             **fields: Any) -> EmailNotifier:
    cfg = EmailConfig(**{"username": USER, "password_file": str(password_file),
                         "sender": "watcher@example.com", "to": ("ops@example.com",),
                         **fields})
    return EmailNotifier(cfg, tmp_path / "spool-email", timeout_s=1.0, budget_s=budget_s)


def spooled(tmp_path: Path, suffix: str = ".json") -> list[Path]:
    return sorted(p for p in (tmp_path / "spool-email").iterdir() if p.name.endswith(suffix))


def assert_no_password(tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    assert PASSWORD not in json.dumps(logs, default=str)
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "smtp_password":
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_failure_is_mailed_over_starttls_with_auth(
        tmp_path: Path, password_file: Path, smtp_tls: SMTPServer) -> None:
    """A failed deploy is mailed after STARTTLS and AUTH, with the error and migrations."""
    report = make_report(message=f"boom near {PASSWORD}")
    with capture_logs() as logs:
        assert notifier(tmp_path, password_file, smtp_url=smtp_tls.url).send(report)
    (mail,) = smtp_tls.wait_for(1)
    assert (mail.tls, mail.login) == (True, USER)
    assert mail.rcpt_tos == ("ops@example.com",)
    assert "mysite deploy failed on web1" in mail.message["Subject"]
    assert mail.message["Message-ID"] == f"<{report.id}@watcher>"
    assert "Failed at step migrate:" in mail.body
    assert "billing.0007_invoice" in mail.body
    assert "RuntimeError: boom" in mail.body
    assert PASSWORD not in mail.raw.decode()
    assert outcome_events(logs) == ["email.sent"]
    assert_no_password(tmp_path, logs)


def test_success_is_not_mailed_unless_listed_in_on(
        tmp_path: Path, password_file: Path, smtp_tls: SMTPServer) -> None:
    """`on` decides: a success is not mailed by default, and is when `on` names it."""
    assert notifier(tmp_path, password_file, smtp_url=smtp_tls.url).send(
        make_report("succeeded"))
    assert smtp_tls.wait_for(1, timeout=0.5) == []
    loud = notifier(tmp_path, password_file, smtp_url=smtp_tls.url, on=("succeeded",))
    assert loud.send(make_report("succeeded"))
    assert not loud.wants("failed")
    (mail,) = smtp_tls.wait_for(1)
    assert "deploy succeeded" in mail.message["Subject"]


def test_auth_in_clear_is_allowed_on_loopback_only(tmp_path: Path, password_file: Path) -> None:
    """Without STARTTLS the password goes to a loopback server, never to another host."""
    with SMTPServer(users={USER: PASSWORD}) as local:
        assert notifier(tmp_path, password_file, smtp_url=local.url).send(make_report())
        (mail,) = local.wait_for(1)
        assert (mail.tls, mail.login) == (False, USER)
    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                               check=False).stdout.split()
    public = next((a for a in addresses if "." in a and not a.startswith("127.")), None)
    if public is None:
        pytest.skip("this host has no non-loopback IPv4 address to listen on")
    with SMTPServer(users={USER: PASSWORD}, host=public) as remote, capture_logs() as logs:
        assert not notifier(tmp_path / "r", password_file, smtp_url=remote.url).send(
            make_report())
        assert remote.auth_attempts == [] and remote.messages == []
    failed = [e for e in logs if e["event"] == "email.failed"]
    assert "offers no STARTTLS" in failed[0]["error"]
    assert len(spooled(tmp_path / "r")) == 1


def test_undelivered_mail_is_spooled_without_password_then_flushed(
        tmp_path: Path, password_file: Path) -> None:
    """SMTP down: the mail waits in spool-email/ (no password in it) until a flush sends it."""
    server = SMTPServer(users={USER: PASSWORD})
    mailer = notifier(tmp_path, password_file, budget_s=1.5, smtp_url=server.url)
    with capture_logs() as logs:
        assert not mailer.send(make_report(message=f"db said {PASSWORD}"))
    (path,) = spooled(tmp_path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert "email.spooled" in [e["event"] for e in logs]
    assert_no_password(tmp_path, logs)
    with server:
        assert mailer.flush() == 1
        (mail,) = server.wait_for(1)
    assert spooled(tmp_path) == []
    assert "db said [redacted]" in mail.body
    assert PASSWORD not in mail.raw.decode()


def test_spooled_mails_go_first_and_in_order(tmp_path: Path, password_file: Path) -> None:
    """The next send flushes what waits before mailing its own report, oldest first."""
    server = SMTPServer(users={USER: PASSWORD})
    mailer = notifier(tmp_path, password_file, budget_s=1.0, smtp_url=server.url)
    first, second = make_report(), make_report("rolled_back")
    assert not mailer.send(first)
    with server:
        assert mailer.send(second)
        mails = server.wait_for(2)
    assert [m.message["Message-ID"] for m in mails] == [f"<{first.id}@watcher>",
                                                         f"<{second.id}@watcher>"]


def test_permanent_rejection_is_set_aside_and_temporary_is_kept(
        tmp_path: Path, password_file: Path) -> None:
    """A 5xx reply to the message sets it aside as *.rejected; a 4xx keeps it for later."""
    with SMTPServer(users={USER: PASSWORD}) as server:
        mailer = notifier(tmp_path, password_file, budget_s=1.5, smtp_url=server.url)
        server.reject = "451 4.3.0 try again later"
        assert not mailer.send(make_report())
        assert mailer.flush() == 0
        assert len(spooled(tmp_path)) == 1
        server.reject = "554 5.6.0 message refused"
        assert mailer.flush() == 0
        assert len(spooled(tmp_path, ".rejected")) == 1 and spooled(tmp_path) == []
        with capture_logs() as logs:
            assert not mailer.send(make_report())
        assert outcome_events(logs) == ["email.rejected"]
        assert spooled(tmp_path) == [] and server.messages == []


def test_wrong_password_keeps_the_mail_and_is_read_again_at_each_send(
        tmp_path: Path, password_file: Path, smtp_tls: SMTPServer) -> None:
    """A refused login spools the mail; fixing password_file needs no restart."""
    password_file.write_text("not-the-password\n")
    mailer = notifier(tmp_path, password_file, smtp_url=smtp_tls.url)
    with capture_logs() as logs:
        assert not mailer.send(make_report())
    failed = [e for e in logs if e["event"] == "email.failed"]
    assert "login refused" in failed[0]["error"]
    # One session (smtplib tries PLAIN, then LOGIN), not retried: a bad password stays bad.
    assert {ok for _, ok in smtp_tls.auth_attempts} == {False}
    assert len(smtp_tls.auth_attempts) <= 2
    password_file.write_text(PASSWORD)
    assert mailer.flush() == 1
    assert len(smtp_tls.wait_for(1)) == 1


def test_http_api_gets_postmark_shaped_json_with_token_header(
        tmp_path: Path, password_file: Path) -> None:
    """api_url: POST {From, To, Subject, TextBody} with X-Postmark-Server-Token."""
    with LogAPI() as api, capture_logs() as logs:
        assert notifier(tmp_path, password_file, api_url=api.url,
                        to=("ops@example.com", "dev@example.com")).send(make_report())
        (req,) = api.requests
    assert req.headers["x-postmark-server-token"] == PASSWORD
    assert req.json["From"] == "watcher@example.com"
    assert req.json["To"] == "ops@example.com, dev@example.com"
    assert req.json["Subject"].startswith("[watcher] mysite deploy failed")
    assert "Failed at step migrate:" in req.json["TextBody"]
    assert PASSWORD not in json.dumps(logs)


def test_http_api_outage_is_spooled_and_422_is_dropped_with_a_log(
        tmp_path: Path, password_file: Path) -> None:
    """A 503 keeps the mail for the next flush; a 422 (a bad message) is logged, not kept."""
    with LogAPI(mode="5xx") as api:
        mailer = notifier(tmp_path, password_file, budget_s=1.5, api_url=api.url)
        assert not mailer.send(make_report())
        assert len(spooled(tmp_path)) == 1
        api.mode = "ok"
        assert mailer.flush() == 1
        api.mode = "422"
        with capture_logs() as logs:
            assert mailer.send(make_report("rollback_failed")) is False
        assert "email.rejected" in [e["event"] for e in logs]
        assert spooled(tmp_path) == []


@pytest.mark.parametrize(("fields", "words"), [
    ({"smtp_url": "smtp://a:587", "api_url": "https://api"}, "not both"),
    ({"smtp_url": "http://mail.example.com"}, "smtp_url must be"),
    ({"smtp_url": "smtp://user:secret@mail.example.com"}, "without credentials"),
    ({"api_url": "ftp://api"}, "api_url must be"),
    ({"smtp_url": "smtp://a", "to": ()}, "notify.email.to"),
    ({"smtp_url": "smtp://a", "on": ("failed", "exploded")}, "unknown outcome"),
])
def test_bad_settings_are_config_errors(tmp_path: Path, fields: dict[str, Any],
                                        words: str) -> None:
    """Each wrong [notify.email] setting is a config error naming the key."""
    cfg = replace(EmailConfig(to=("ops@example.com",)), **fields)
    with pytest.raises(ConfigError, match=words) as info:
        EmailNotifier(cfg, tmp_path / "spool", "watcher.toml")
    assert "secret" not in str(info.value)


def write_config(tmp_path: Path, email: str) -> Path:
    """A minimal watcher.toml whose [notify.email] section is `email`."""
    return minimal_config(tmp_path, f"[notify.email]\n{email}")


def test_journal_sends_and_flushes_mail_from_the_config_file(
        tmp_path: Path, password_file: Path) -> None:
    """[notify.email] in watcher.toml gives the journal a mailer, and Journal.flush retries."""
    server = SMTPServer(users={USER: PASSWORD})
    config = write_config(tmp_path, f"""smtp_url = "{server.url}"
username = "{USER}"
password_file = "{password_file}"
to = ["ops@example.com"]
""")
    cfg = load(config, environ={})
    journal = Journal(cfg, Layout(cfg.app.root), StateFile(cfg.state_dir / "state.json"))
    assert journal.emailer is not None
    journal.emailer.budget_s = 1.0
    journal.emailer.send(make_report())
    assert len(list((cfg.state_dir / "spool-email").glob("*.json"))) == 1
    with server:
        assert journal.flush() == 1
        assert len(server.wait_for(1)) == 1


def test_loading_the_config_checks_notify_email(tmp_path: Path) -> None:
    """A wrong [notify.email] fails `load` (so `watcher check` and every command exit 2)."""
    config = write_config(tmp_path, 'smtp_url = "http://mail.example.com"\n')
    with pytest.raises(ConfigError, match=f"{config}: notify.email.smtp_url must be"):
        load(config, environ={})
    config.write_text(config.read_text().replace('"http://mail.example.com"', '""'))
    assert load(config, environ={}).email is not None  # present but off: not checked
