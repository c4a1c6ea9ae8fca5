"""parts/gunicorn.py's readers for a rolling reload's retirement, on a fake /proc: `children`
lists the master's workers oldest first with each one's own heartbeat, or None when it cannot
tell for sure; `retiring` says when a worker closed its heartbeat (left its request loop)."""

from __future__ import annotations

import os
from pathlib import Path

from watcher.parts.gunicorn import Worker, Workers, children, retiring, workers

MASTER = 100


class FakeProc:
    """/proc with processes whose fds link to real files (the heartbeats, named as Gunicorn
    names them), a stat line with a start time, and the master's children file."""

    def __init__(self, tmp_path: Path) -> None:
        self.root, self.files = tmp_path / "proc", tmp_path / "files"
        self.files.mkdir()
        self.add(MASTER, start=1)

    def heartbeat(self, name: str) -> tuple[int, int]:
        path = self.files / f"wgunicorn-{name}"
        path.touch()
        st = path.stat()
        return st.st_dev, st.st_ino

    def add(self, pid: int, start: int, *beats: str) -> None:
        fd = self.root / str(pid) / "fd"
        fd.mkdir(parents=True)
        (fd / "0").symlink_to("/dev/null")
        for n, name in enumerate(beats, start=3):
            self.heartbeat(name)
            (fd / str(n)).symlink_to(self.files / f"wgunicorn-{name}")
        # comm with a space and a parenthesis, as a process may name itself
        (self.root / str(pid) / "stat").write_text(
            f"{pid} (gunicorn: w) x) S {MASTER} " + " ".join(["0"] * 17) + f" {start} 0 0\n")

    def close(self, pid: int, name: str) -> None:
        for fd in (self.root / str(pid) / "fd").iterdir():
            if os.readlink(fd).endswith(f"wgunicorn-{name}"):
                fd.unlink()

    def set_children(self, *pids: int) -> None:
        task = self.root / str(MASTER) / "task" / str(MASTER)
        task.mkdir(parents=True, exist_ok=True)
        (task / "children").write_text("".join(f"{pid} " for pid in pids))


def master_with(tmp_path: Path, *workers_: tuple[int, int, str]) -> FakeProc:
    proc = FakeProc(tmp_path)
    for pid, start, name in workers_:
        proc.add(pid, start, name)
        fd = proc.root / str(MASTER) / "fd" / str(10 + pid)
        fd.symlink_to(proc.files / f"wgunicorn-{name}")
    proc.set_children(*(pid for pid, _, _ in workers_))
    return proc


def test_children_lists_the_workers_in_fork_order_with_their_own_heartbeat(
        tmp_path: Path) -> None:
    """In the order of the children file (fork order; pids may wrap), each worker with the
    heartbeat it holds and the master holds too; the master's count reads the same files."""
    proc = master_with(tmp_path, (900, 5, "a"), (120, 5, "b"), (130, 7, "c"))
    found = children(MASTER, proc.root)
    assert found == [Worker(900, proc.heartbeat("a")), Worker(120, proc.heartbeat("b")),
                     Worker(130, proc.heartbeat("c"))]
    assert workers(MASTER, proc.root) == Workers(3, 0)


def test_children_is_none_when_it_cannot_tell_for_sure(tmp_path: Path) -> None:
    """No children file; no child; a child that holds no heartbeat of the master's (it
    exited meanwhile) or two (a Gunicorn leaking its siblings'); start times out of fork
    order; a child gone: no order to trust, the caller waits for the count instead."""
    proc = master_with(tmp_path, (200, 5, "a"), (201, 6, "b"))
    (proc.root / str(MASTER) / "task" / str(MASTER) / "children").unlink()
    assert children(MASTER, proc.root) is None
    proc.set_children()
    assert children(MASTER, proc.root) is None
    proc.set_children(201, 200)  # 201 started after 200: not fork order
    assert children(MASTER, proc.root) is None
    proc.set_children(200, 201, 202)  # 202 is gone
    assert children(MASTER, proc.root) is None
    proc.set_children(200, 201)
    assert children(MASTER, proc.root) is not None
    (proc.root / "201" / "fd" / "9").symlink_to(proc.files / "wgunicorn-a")  # leaked
    assert children(MASTER, proc.root) is None
    proc.close(201, "a")
    proc.close(201, "b")  # left its loop
    assert children(MASTER, proc.root) is None
    assert children(MASTER, tmp_path / "nothing") is None


def test_retiring_once_the_worker_closed_its_heartbeat_or_is_gone(tmp_path: Path) -> None:
    """False while the worker holds its heartbeat (another one's, of the same name pattern,
    does not count); True once it closed it, when its fd directory is empty (a zombie) or
    its /proc entry is gone (reaped); False when its fds cannot be read."""
    proc = master_with(tmp_path, (300, 5, "a"), (301, 6, "b"))
    old = children(MASTER, proc.root)
    assert old is not None
    first, second = old
    assert not retiring(first, proc.root)
    assert not retiring(second, proc.root)
    (proc.root / "300" / "fd" / "7").symlink_to(proc.files / "wgunicorn-b")
    proc.close(300, "a")
    assert retiring(first, proc.root)
    assert not retiring(second, proc.root)
    proc.close(300, "b")
    for fd in (proc.root / "300" / "fd").iterdir():
        fd.unlink()
    assert retiring(first, proc.root)  # a zombie: no fds at all
    fd_dir = proc.root / "301" / "fd"
    for fd in fd_dir.iterdir():
        fd.unlink()
    fd_dir.rmdir()
    fd_dir.write_text("")  # listing fails while the process is there: unreadable
    assert not retiring(second, proc.root)
    assert retiring(Worker(302, second.heartbeat), proc.root)  # no /proc entry: reaped
