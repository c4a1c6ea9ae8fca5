"""Logging set-up, the only one: structlog, JSON lines off a TTY, key=value on a TTY.

Every event passes through `scrub`, which blanks registered secrets and credentials in URLs,
so no token, password or webhook secret reaches a log line even by accident.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# The userinfo of a URL of any scheme: everything from `scheme://` to the LAST `@` of the
# token (passwords hold `@`, `/` and `:` unencoded: `postgres://app:pa/ss@db`, an empty user
# too: `redis://:pass@host`). A token ends at whitespace or a quote. Masking a path's `@`
# as well (`https://h/a@b`) is the safe side of the trade. Bounded: no quadratic backtracking.
USERINFO_MAX = 1024
_URL_CREDS = re.compile(
    rf"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s\"'<>`]{{0,{USERINFO_MAX}}})@")
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
MASK = "***"


def register_secret(value: str) -> None:
    """Remember a secret so it is blanked wherever it would be logged or reported."""
    if value and len(value) >= 4:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def scrub(text: str) -> str:
    """Blank known secrets and the userinfo (`user:pass@`) of URLs of any scheme."""
    if not text:
        return text
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _URL_CREDS.sub(_mask_userinfo, text)


def _mask_userinfo(m: re.Match[str]) -> str:
    return m.group("scheme") + MASK + "@"


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, BaseException):
        return scrub(str(value))
    return value


def scrub_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        event_dict[key] = _scrub_value(value)
    return event_dict


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Set up structlog once per process; JSON unless the stream is a TTY."""
    out = stream or sys.stderr
    as_json = (not out.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False, pad_event=28)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
