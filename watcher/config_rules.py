"""Checks of single config values that a type alone does not catch; each raises ConfigError
naming the key and the file (`where` is "<file>: <section>.<key>"). Pure: no I/O.

Every value here once passed `load` and failed later, after work was done: an https
supervisor.url failed after the switch; `git.interval = 1e10` crashed the daemon's wait;
`build.shared = ["."]` linked the whole release away.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath
from urllib.parse import SplitResult, urlsplit

from watcher.errors import ConfigError
from watcher.log import scrub

MAX_DURATION = 7 * 24 * 3600.0  # a week: more is a typo, and overflows a thread's wait
_BRANCH_BAD = re.compile(r"(^[-/.])|([/.]$)|(\.\.)|(//)|(@\{)|(\.lock$)|[\x00-\x20~^:?*\[\\\x7f]")
MANAGED = frozenset({"REVISION", ".venv"})  # names watcher writes into every release


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def duration(where: str, seconds: float) -> None:
    if seconds > MAX_DURATION:
        raise ConfigError(f"{where} must be at most 7 days ({MAX_DURATION:g}s), got {seconds:g}s")


def web_url(where: str, value: str, *, credentials: bool = False) -> SplitResult:
    """An http(s) URL with a host; with `credentials`, user:password@ may be in it (a health
    endpoint behind basic auth: the password is blanked wherever the URL is logged)."""
    parts = _split(where, value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} must be an http:// or https:// URL with a host, "
                          f"got {scrub(value)!r}")
    if not credentials and (parts.username is not None or parts.password is not None):
        raise ConfigError(f"{where} must not carry credentials (user:password@)")
    return parts


def supervisor_url(where: str, value: str) -> None:
    """unix:///absolute/socket or http://host[:port]: what the XML-RPC client speaks."""
    parts = _split(where, value)
    if parts.scheme == "unix":
        if not (parts.netloc == "" and parts.path.startswith("/")) or parts.path == "/":
            raise ConfigError(f"{where} must be unix:///path/to/supervisor.sock, "
                              f"got {scrub(value)!r}")
        return
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"{where} must be unix:///path or http://host:port (supervisord "
                          f"serves no https), got {scrub(value)!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where} must not carry credentials; use supervisor.username and "
                          "supervisor.password_file")


def remote(where: str, value: str, token_file: str) -> None:
    """No password in any remote URL (ssh://user:pw@ too); a token only over https, or
    plain http to the loopback (a token sent over http to another host is in the clear)."""
    if "://" not in value:
        return  # a path, or scp-like user@host:path (no password can be written there)
    parts = _split(where, value)
    if parts.password is not None or (parts.scheme in ("http", "https") and parts.username):
        raise ConfigError(f"{where} must not carry credentials; put the token in "
                          "git.token_file, the key in git.ssh_key_file")
    if token_file and parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        raise ConfigError(f"{where} is http:// and git.token_file is set: the token would go "
                          "in the clear; use https:// (plain http only to the loopback)")


def branch(where: str, value: str) -> None:
    if not value.strip() or _BRANCH_BAD.search(value):
        raise ConfigError(f"{where} must be a branch name (no spaces, `..`, `~^:?*[\\`), "
                          f"got {scrub(value)!r}")


def release_path(where: str, value: str, *, shared: bool = False) -> None:
    """A relative path to something inside the release: not empty, not `.`, no `..`."""
    path = PurePosixPath(value)
    if not value.strip() or path.is_absolute() or not path.parts or ".." in path.parts \
            or path.parts == (".",) or any(p.strip() != p for p in path.parts):
        raise ConfigError(f"{where} must be a path inside the release, got {scrub(value)!r}")
    if shared and path.parts[0] in MANAGED:
        raise ConfigError(f"{where}: {scrub(value)!r} is written by watcher in every release")


def not_blank(where: str, value: str) -> None:
    if not value.strip():
        raise ConfigError(f"{where} must not be empty")


def listen(where: str, value: str) -> None:
    """host:port, port 0-65535 (0 picks a free one), `[::1]:9090` for IPv6."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{where} must be host:port with a port from 0 to 65535, "
                          f"got {scrub(value)!r}")
    bare = host.strip("[]")
    if bare and not re.fullmatch(r"[A-Za-z0-9.:-]+", bare):
        raise ConfigError(f"{where}: {host!r} is not a host name or address")


def _split(where: str, value: str) -> SplitResult:
    try:
        parts = urlsplit(value)
        _ = parts.port  # ValueError on a port that is not a number or out of range
    except ValueError as exc:
        raise ConfigError(f"{where}: {scrub(value)!r} is not a valid URL ({exc})") from None
    return parts


# The longest path a unix socket can have (sun_path is 108 bytes, with its NUL).
MAX_SOCKET_PATH = 107


def published_socket(where: str, sockets: tuple[str, ...], publish: str) -> None:
    """bluegreen.sockets and bluegreen.publish: both or neither; absolute, distinct, and
    short enough for a unix socket."""
    if not sockets and not publish:
        return
    if not publish or len(sockets) != 2:
        raise ConfigError(f"{where}.sockets (two paths, one per colour) and {where}.publish "
                          "go together: set both, or neither")
    for key, path in [("sockets", s) for s in sockets] + [("publish", publish)]:
        if not PurePosixPath(path).is_absolute():
            raise ConfigError(f"{where}.{key}: {path!r} must be an absolute path")
        if len(path.encode()) > MAX_SOCKET_PATH:
            raise ConfigError(f"{where}.{key}: {path!r} is longer than a unix socket path "
                              f"can be ({MAX_SOCKET_PATH} bytes)")
    if len({*sockets, publish}) != 3:
        raise ConfigError(f"{where}.sockets and {where}.publish must be three different paths")
