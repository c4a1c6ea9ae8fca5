"""The request head of HTTP/1.x, parsed from bytes: pure, bounded, fuzzed by the tests.

`head_end` finds where a head ends in what has arrived so far; `parse_head` turns it into a
`Head` or raises `HeadError(status, reason)`. The listener never holds more than
`MAX_HEAD_BYTES` of head per connection: total header bytes per request are bounded, not
only the length of each line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD_BYTES = 16 * 1024  # request line and every header together
MAX_HEADERS = 64
_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_VERSION = re.compile(r"HTTP/1\.[01]")
_FIELD_VALUE = re.compile(r"[\t\x20-\xff]*")


class HeadError(Exception):
    """A head that is refused, with the status to answer and a short reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Head:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def get_all(self, name: str) -> list[str]:
        low = name.lower()
        return [v for k, v in self.headers if k.lower() == low]

    def get(self, name: str, default: str = "") -> str:
        found = self.get_all(name)
        return found[0] if found else default

    def __contains__(self, name: str) -> bool:
        return bool(self.get_all(name))


def head_end(data: bytes | bytearray) -> int | None:
    """The length of the head (blank line included) if `data` holds a whole one."""
    m = _END.search(data)
    return m.end() if m else None


def parse_head(data: bytes | bytearray) -> Head:
    """Parse a whole head (as delimited by `head_end`); raise HeadError when it is refused."""
    if len(data) > MAX_HEAD_BYTES:
        raise HeadError(431, "request_head_too_large")
    lines = bytes(data).decode("latin-1").split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise HeadError(400, "empty_request")
    words = lines[0].split(" ")
    if len(words) != 3:
        raise HeadError(400, "bad_request_line")
    method, target, version = words
    if not _TOKEN.fullmatch(method):
        raise HeadError(400, "bad_method")
    if not _VERSION.fullmatch(version):
        raise HeadError(400, "bad_version")
    if not _TARGET.fullmatch(target):
        raise HeadError(400, "bad_target")
    if len(lines) - 1 > MAX_HEADERS:
        raise HeadError(431, "too_many_headers")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HeadError(400, "bad_header")
        value = value.strip(" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise HeadError(400, "bad_header_value")
        headers.append((name, value))
    return Head(method, target, version, tuple(headers))
