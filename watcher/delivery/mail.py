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

import ipaddress
import random
import smtplib
import ssl
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from watcher.config import EmailConfig, read_secret
from watcher.delivery.formats import mask
from watcher.delivery.mail_text import render_message
from watcher.delivery.outbox import Outbox
from watcher.delivery.report import OUTCOMES, Report, redact_url
from watcher.errors import ConfigError, WatcherError
from watcher.log import register_secret

_log = structlog.get_logger("watcher.delivery.mail")

_MAX_ATTEMPTS = 3


class _Failed(Exception):
    """Not delivered now; kept in the spool. The message is safe to log."""


class _Retryable(_Failed):
    """A connection error, a timeout, a 4xx SMTP reply, an HTTP 5xx or 429."""


class _Rejected(_Failed):
    """The server refused this message for good (5xx SMTP reply to it, HTTP 400/422)."""


class EmailNotifier:
    def __init__(self, cfg: EmailConfig, spool_dir: Path, where: str = "config", *,
                 timeout_s: float = 10.0, budget_s: float = 15.0,
                 spool_max_bytes: int = 5 * 1024 * 1024) -> None:
        check_config(cfg, where)
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
        except _Failed:
            return ""

    # -- delivery --------------------------------------------------------------------
    def _deliver(self, doc: dict[str, Any], deadline: float) -> str:
        """One mail with retries: "sent", "rejected" or "failed"."""
        where = {"id": doc.get("id"), "endpoint": self._endpoint}
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0.25:
                    raise _Failed("time budget used up")
                password = self._password()
                message = render_message(mask(doc, password), self.cfg)
                if self.cfg.api_url:
                    self._post(message, password, min(self.timeout_s, remaining))
                else:
                    self._smtp(message, password, min(self.timeout_s, remaining))
            except _Rejected as exc:
                _log.error("email.rejected", **where, error=str(exc))
                return "rejected"
            except _Retryable as exc:
                pause = min(random.uniform(0.2, 0.5 * 2**attempt),  # noqa: S311 - jitter
                            deadline - time.monotonic() - 0.25)
                if attempt >= _MAX_ATTEMPTS or pause <= 0:
                    _log.error("email.failed", **where, error=str(exc), attempts=attempt)
                    return "failed"
                _log.warning("email.retry", **where, error=str(exc), attempt=attempt)
                time.sleep(pause)
                continue
            except _Failed as exc:
                _log.error("email.failed", **where, error=str(exc), attempts=attempt)
                return "failed"
            _log.info("email.sent", **where, to=list(self.cfg.to), attempts=attempt)
            return "sent"

    def _password(self) -> str:
        try:
            password = read_secret(self.cfg.password_file, "notify.email.password_file")
        except WatcherError as exc:
            raise _Failed(str(exc)) from None
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
                    if not secure and not _loopback(host):
                        raise _Failed(f"{host} offers no STARTTLS: the password is not sent "
                                      "in clear (use smtps:// or a server with STARTTLS)")
                    client.login(self.cfg.username, password)
                client.send_message(message)
        except _Failed:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise _Failed(f"SMTP {exc.smtp_code}: login refused; check "
                          "notify.email.username and password_file") from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            kind: type[_Failed] = _Retryable if all(c < 500 for c in codes) else _Rejected
            raise kind(f"SMTP recipients refused: {codes}") from None
        except smtplib.SMTPResponseException as exc:
            cls: type[_Failed] = _Retryable if exc.smtp_code < 500 else _Rejected
            if isinstance(exc, smtplib.SMTPSenderRefused) or exc.smtp_code in (530, 538):
                cls = _Failed  # the sender or the session is wrong, not this message
            raise cls(f"SMTP {exc.smtp_code}") from None
        except ssl.SSLCertVerificationError:
            raise _Failed(f"TLS certificate of {host} not trusted") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise _Retryable(type(exc).__name__) from None

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
            raise _Retryable(type(exc).__name__) from None  # its text names the URL
        status = resp.status_code
        resp.close()
        if 200 <= status < 300:
            return
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}")
        if status in (400, 413, 422):
            raise _Rejected(f"HTTP {status}")
        raise _Failed(f"HTTP {status}")  # 401, 403, 404, 3xx: the token or the URL is wrong


def check_config(cfg: EmailConfig, where: str) -> None:
    """[notify.email] as a whole; ConfigError naming the key (exit code 2)."""
    if cfg.smtp_url and cfg.api_url:
        raise ConfigError(f"{where}: set notify.email.smtp_url or notify.email.api_url, not both")
    if cfg.smtp_url and not _smtp_url_ok(cfg.smtp_url):
        raise ConfigError(f"{where}: notify.email.smtp_url must be smtp://host[:port] or "
                          "smtps://host[:port], without credentials (use password_file)")
    if cfg.api_url and urlsplit(cfg.api_url).scheme not in ("http", "https"):
        raise ConfigError(f"{where}: notify.email.api_url must be an http(s) URL")
    if not cfg.to or not all("@" in a for a in cfg.to):
        raise ConfigError(f"{where}: notify.email.to needs at least one address")
    if "@" not in cfg.sender:
        raise ConfigError(f"{where}: notify.email.sender must be an address")
    unknown = [o for o in cfg.on if o not in OUTCOMES]
    if unknown:
        raise ConfigError(f"{where}: notify.email.on: unknown outcome(s) {unknown}; "
                          f"expected some of {', '.join(OUTCOMES)}")


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _smtp_url_ok(url: str) -> bool:
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError on a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("smtp", "smtps") and bool(parts.hostname) and not parts.password


def enabled(cfg: EmailConfig | None) -> bool:
    """Whether `[notify.email]` is configured to send anything at all."""
    return cfg is not None and bool(cfg.smtp_url or cfg.api_url)
