"""The one socket path Nginx connects to (`bluegreen.publish`): a symlink watcher points at
the live blue/green colour's own unix socket (`bluegreen.sockets`).

Each colour's Gunicorn binds its TCP port (watcher's health check only) and its own socket.
Nginx's upstream names only the published path, and resolves it at every connect, so it
can never reach a colour before watcher points the link at it, which it does only after that
colour passed its health check. Re-pointing is one rename (`fs.point_link`): connections
already made finish on the old colour; the next one goes to the new.

Crash points: a kill before the rename leaves the link on the old colour (still running, as
the swap stops it only afterwards); a kill after it leaves the link on the new colour, both
running: the next run's reconcile points it at the colour it keeps before stopping the other.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import structlog

from watcher.parts.fs import point_link

log = structlog.get_logger()


class SocketLink:
    """The published path and the colours' sockets, by colour name."""

    def __init__(self, path: str, sockets: dict[str, str]) -> None:
        self.path = Path(path)
        self.sockets = sockets

    def pointed(self) -> str:
        """The colour the link names now ("" for none, or a target that is no colour's)."""
        try:
            target = os.readlink(self.path)
        except OSError:
            return ""
        return next((name for name, sock in self.sockets.items() if sock == target), "")

    def prepare(self) -> None:
        """The directories of the link and of the sockets (Gunicorn cannot bind a socket in
        a directory that does not exist)."""
        for path in {self.path.parent, *(Path(s).parent for s in self.sockets.values())}:
            path.mkdir(mode=0o755, parents=True, exist_ok=True)

    def point(self, colour: str) -> bool:
        """Point the link at `colour`'s socket; False when it already was."""
        if self.pointed() == colour:
            return False
        self.prepare()
        point_link(self.path, self.sockets[colour])
        return True

    def answers(self, timeout: float = 1.0) -> bool:
        """Does a connect through the link reach a listening socket (what Nginx does)?"""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.path))
            except OSError:
                return False
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            return True
