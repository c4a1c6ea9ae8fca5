"""Failure emails (`[notify.email]`): SMTP or a Postmark-shaped HTTP API, spooled and retried.

`EmailNotifier.send` mails a report whose outcome is in `on` and never raises: what cannot
be delivered within the time budget waits in `.watcher/spool-email/` (the report document,
with the password masked; never a rendered message or a credential) and is sent again,
oldest first, by the next `send` or `flush`. The message is rendered at delivery, so a
recipient list fixed in the config applies to mails still waiting.

Transports:

- `smtp://host[:587]`: STARTTLS whenever the server offers it. Without TLS the password is
  sent only to a loopback server; elsewhere the mail waits in the spool and the log says why.
- `smtps://host[:465]`: TLS from the first byte.
- `api_url`: `POST {From, To, Subject, TextBody}` as JSON with the header
  `X-Postmark-Server-Token: <password_file>` (Postmark's /email endpoint, and look-alikes).

The password is read from `password_file` at each delivery (rotation needs no restart) and
registered with the log scrubber. Errors are logged by class, SMTP code or HTTP status only.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from watcher.config import EmailConfig, is_loopback, read_secret
from watcher.config_checks import check_email
from watcher.delivery.formats import mask
from watcher.delivery.mail_text import render_message
from watcher.delivery.outbox import Outbox
from watcher.delivery.record import Report, redact_url
from watcher.delivery.retry import Delivered, Failed, Rejected, Retry, with_retries
from watcher.errors import WatcherError
from watcher.log import register_secret

_log = structlog.get_logger("watcher.delivery.mail")

_MAX_ATTEMPTS = 3


class EmailNotifier:
    def __init__(self, cfg: EmailConfig, spool_dir: Path, where: str = "config", *,
                 timeout_s: float = 10.0, budget_s: float = 15.0,
                 spool_max_bytes: int = 5 * 1024 * 1024) -> None:
        check_email(cfg, where)
        self.cfg = cfg
        self.timeout_s = timeout_s
        self.budget_s = budget_s
        self._endpoint = redact_url(cfg.smtp_url or cfg.api_url)
        self._outbox = Outbox(spool_dir, spool_max_bytes, "email", self._deliver,
                              self._password_or_nothing)

    def wants(self, outcome: str) -> bool:
        return outcome in self.cfg.on

    def send(self, report: Report) -> bool:
        """Mail `report` if its outcome is wanted, after any spooled mails. True: nothing of it
        is left to do; False: spooled for a later flush (or lost, logged as email.lost)."""
        if not self.wants(report.outcome):
            self.flush()
            return True
        return self._outbox.send(report.to_dict(), self.budget_s)

    def flush(self) -> int:
        """Deliver spooled mails oldest first, stopping at the first failure; how many went."""
        return self._outbox.flush(self.budget_s)

    def _password_or_nothing(self) -> str:
        try:
            return self._password()
        except Failed:
            return ""

    # -- delivery --------------------------------------------------------------------
    def _deliver(self, doc: dict[str, Any], deadline: float) -> Delivered:
        """One mail with retries (the shared policy)."""
        where = {"id": doc.get("id"), "endpoint": self._endpoint}

        def attempt(remaining: float) -> None:
            password = self._password()
            message = render_message(mask(doc, password), self.cfg)
            if self.cfg.api_url:
                self._post(message, password, min(self.timeout_s, remaining))
            else:
                self._smtp(message, password, min(self.timeout_s, remaining))

        def retrying(exc: Failed, attempt: int) -> None:
            _log.warning("email.retry", **where, error=str(exc), attempt=attempt)

        try:
            attempts = with_retries(attempt, deadline=deadline, max_attempts=_MAX_ATTEMPTS,
                                    on_retry=retrying)
        except Rejected as exc:
            _log.error("email.rejected", **where, error=str(exc))
            return "rejected"
        except Failed as exc:
            _log.error("email.failed", **where, error=str(exc))
            return "failed"
        _log.info("email.sent", **where, to=list(self.cfg.to), attempts=attempts)
        return "sent"

    def _password(self) -> str:
        try:
            password = read_secret(self.cfg.password_file, "notify.email.password_file")
        except WatcherError as exc:
            raise Failed(str(exc)) from None
        register_secret(password)
        return password

    def _smtp(self, message: EmailMessage, password: str, timeout: float) -> None:
        url = urlsplit(self.cfg.smtp_url)
        host = url.hostname or "localhost"
        context = ssl.create_default_context()  # honours SSL_CERT_FILE / SSL_CERT_DIR
        try:
            client: smtplib.SMTP
            if url.scheme == "smtps":
                client = smtplib.SMTP_SSL(host, url.port or 465, timeout=timeout,
                                          context=context)
            else:
                client = smtplib.SMTP(host, url.port or 587, timeout=timeout)
            with client:
                client.ehlo()
                if url.scheme == "smtp" and client.has_extn("starttls"):
                    client.starttls(context=context)
                    client.ehlo()
                secure = isinstance(client.sock, ssl.SSLSocket)
                if self.cfg.username:
                    if not secure and not is_loopback(host):
                        raise Failed(f"{host} offers no STARTTLS: the password is not sent "
                                      "in clear (use smtps:// or a server with STARTTLS)")
                    client.login(self.cfg.username, password)
                client.send_message(message)
        except Failed:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise Failed(f"SMTP {exc.smtp_code}: login refused; check "
                          "notify.email.username and password_file") from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            kind: type[Failed] = Retry if all(c < 500 for c in codes) else Rejected
            raise kind(f"SMTP recipients refused: {codes}") from None
        except smtplib.SMTPResponseException as exc:
            cls: type[Failed] = Retry if exc.smtp_code < 500 else Rejected
            if isinstance(exc, smtplib.SMTPSenderRefused) or exc.smtp_code in (530, 538):
                cls = Failed  # the sender or the session is wrong, not this message
            raise cls(f"SMTP {exc.smtp_code}") from None
        except ssl.SSLCertVerificationError:
            raise Failed(f"TLS certificate of {host} not trusted") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise Retry(type(exc).__name__) from None

    def _post(self, message: EmailMessage, token: str, timeout: float) -> None:
        body = {"From": message["From"], "To": message["To"], "Subject": message["Subject"],
                "TextBody": message.get_content(), "MessageStream": "outbound"}
        headers = {"Accept": "application/json", "User-Agent": "watcher"}
        if token:
            headers["X-Postmark-Server-Token"] = token
        import requests  # only when a mail goes out through the HTTP API

        try:
            resp = requests.post(self.cfg.api_url, json=body, headers=headers,
                                 timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise Retry(type(exc).__name__) from None  # its text names the URL
        status = resp.status_code
        resp.close()
        if 200 <= status < 300:
            return
        if status == 429 or status >= 500:
            raise Retry(f"HTTP {status}")
        if status in (400, 413, 422):
            raise Rejected(f"HTTP {status}")
        raise Failed(f"HTTP {status}")  # 401, 403, 404, 3xx: the token or the URL is wrong


def enabled(cfg: EmailConfig | None) -> bool:
    """Whether `[notify.email]` is configured to send anything at all."""
    return cfg is not None and bool(cfg.smtp_url or cfg.api_url)
