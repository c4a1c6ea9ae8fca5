"""The published socket (parts/publish.py): a symlink Nginx resolves at every connect,
re-pointed atomically at the live colour's own unix socket, on real listening sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.parts.publish import SocketLink


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def link(run: Path) -> SocketLink:
    return SocketLink(str(run / "live.sock"),
                      {"blue": str(run / "blue.sock"), "green": str(run / "green.sock")})


class Listener:
    """A unix socket that answers each connection with its own name, as a colour would."""

    def __init__(self, path: Path, name: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.name = name.encode()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # `answers` hangs up at once
                conn.sendall(self.name)

    def close(self) -> None:
        """Stop listening, as a stopped Gunicorn does (shutdown wakes the blocked accept)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def colours(run: Path, link: SocketLink) -> Iterator[dict[str, Listener]]:
    link.prepare()
    found = {name: Listener(Path(path), name) for name, path in link.sockets.items()}
    yield found
    for listener in found.values():
        listener.close()


def through(link: SocketLink) -> str:
    """Connect as Nginx does (by the published path) and read who answered."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(link.path))
        return sock.recv(16).decode()


def test_prepare_makes_the_directories_gunicorn_binds_in(link: SocketLink, run: Path) -> None:
    assert not run.exists()
    link.prepare()
    assert run.is_dir() and oct(run.stat().st_mode & 0o777) == "0o755"


def test_the_next_connect_after_point_reaches_the_new_colour(
        link: SocketLink, colours: dict[str, Listener]) -> None:
    """No link: nothing answers and no colour is named. Pointed at blue, connects reach blue;
    re-pointed at green, the very next connect reaches green, and pointing again is a no-op."""
    assert link.pointed() == "" and not link.answers()
    assert link.point("blue") is True
    assert link.pointed() == "blue" and link.answers() and through(link) == "blue"
    assert link.point("green") is True
    assert through(link) == "green"
    assert link.point("green") is False
    assert os.readlink(link.path) == link.sockets["green"]
    assert [p.name for p in link.path.parent.iterdir() if p.name.startswith(".")] == []


def test_a_link_to_a_colour_that_stopped_does_not_answer(
        link: SocketLink, colours: dict[str, Listener]) -> None:
    """What a reboot leaves: the link names a colour whose socket is gone (Gunicorn unlinks
    it on stop) or stale (nothing listens): `answers` says so, and `pointed` still names it."""
    link.point("green")
    colours["green"].close()
    assert not link.answers() and link.pointed() == "green"
    Path(link.sockets["green"]).unlink()
    assert not link.answers()


def test_a_target_that_is_no_colour_is_named_as_none(link: SocketLink, run: Path) -> None:
    link.prepare()
    link.path.symlink_to(run / "elsewhere.sock")
    assert link.pointed() == ""
