"""The on-disk spool: atomic private files, oldest first, corrupt files set aside, size cap."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from structlog.testing import capture_logs

from watcher.delivery.spool import Spool


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dir_is_0700_and_files_are_0600_even_with_a_loose_umask(tmp_path: Path) -> None:
    """The spool dir is 0700 (an existing looser dir is tightened) and each file is 0600."""
    directory = tmp_path / ".watcher" / "spool"
    directory.mkdir(parents=True, mode=0o755)
    old = os.umask(0o002)
    try:
        spool = Spool(directory, max_bytes=1 << 20)
        path = spool.put("r1", {"report": {"id": "r1"}})
    finally:
        os.umask(old)
    assert _mode(directory) == 0o700
    assert _mode(path) == 0o600
    assert json.loads(path.read_text()) == {"report": {"id": "r1"}}
    assert [p.name for p in directory.iterdir() if p.name != ".lock"] == [path.name]


def test_items_come_back_oldest_first(tmp_path: Path) -> None:
    """Files are named by spool time, so items() returns them in the order they were put."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    ids = [f"id{n}" for n in (5, 3, 9, 1, 7)]
    for report_id in ids:
        spool.put(report_id, {"id": report_id})
    assert [payload["id"] for _, payload in spool.items()] == ids
    names = [path.name for path, _ in spool.items()]
    assert names == sorted(names)
    assert all(name.endswith(f"-{rid}.json") for name, rid in zip(names, ids, strict=True))


def test_a_corrupt_file_is_set_aside_and_does_not_block_the_others(tmp_path: Path) -> None:
    """Unparseable or non-object files become *.bad with a log line; the rest are returned."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    first = spool.put("a", {"id": "a"})
    broken = spool.put("b", {"id": "b"})
    not_object = spool.put("c", {"id": "c"})
    last = spool.put("d", {"id": "d"})
    broken.write_bytes(b'{"id": "b", trunc')
    not_object.write_text("[1, 2]")
    with capture_logs() as events:
        items = spool.items()
    assert [path for path, _ in items] == [first, last]
    assert broken.with_name(broken.name + ".bad").exists()
    assert not_object.with_name(not_object.name + ".bad").exists()
    bad = [e for e in events if e["event"] == "spool.bad"]
    assert [e["id"] for e in bad] == ["b", "c"]
    assert _pending_bytes(spool) == first.stat().st_size + last.stat().st_size


def test_cap_drops_the_oldest_files_with_a_log_event(tmp_path: Path) -> None:
    """Past max_bytes the oldest reports are dropped, each with a spool.dropped event."""
    spool = Spool(tmp_path / "spool", max_bytes=1000)
    payload = {"pad": "x" * 300}
    size = len(json.dumps(payload, sort_keys=True).encode())
    with capture_logs() as events:
        for n in range(5):
            spool.put(f"r{n}", payload)
    assert [p.name.split("-", 1)[1] for p, _ in spool.items()] == ["r2.json", "r3.json", "r4.json"]
    assert _pending_bytes(spool) == 3 * size <= 1000
    dropped = [e for e in events if e["event"] == "spool.dropped"]
    assert [e["id"] for e in dropped] == ["r0", "r1"]
    assert all(e["log_level"] == "warning" for e in dropped)


def test_cap_never_drops_the_report_just_written(tmp_path: Path) -> None:
    """A single report larger than the cap is kept (the older ones go first)."""
    spool = Spool(tmp_path / "spool", max_bytes=10)
    spool.put("old", {"id": "old"})
    newest = spool.put("big", {"pad": "y" * 100})
    assert [path for path, _ in spool.items()] == [newest]


def test_remove_and_pending_bytes(tmp_path: Path) -> None:
    """remove() deletes a file (a missing one is fine) and the spool's size follows."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    a = spool.put("a", {"id": "a"})
    b = spool.put("b", {"id": "b"})
    assert _pending_bytes(spool) == a.stat().st_size + b.stat().st_size
    spool.remove(a)
    spool.remove(a)
    assert _pending_bytes(spool) == b.stat().st_size
    assert [path for path, _ in spool.items()] == [b]


def test_leftover_temp_files_are_ignored_and_stale_ones_cleaned(tmp_path: Path) -> None:
    """A *.tmp left by a crash mid-write is never listed; an hour-old one is removed at start."""
    directory = tmp_path / "spool"
    directory.mkdir()
    stale = directory / ".00000000000000000001-x.json.tmp"
    fresh = directory / ".00000000000000000002-y.json.tmp"
    stale.write_text("{}")
    fresh.write_text("{}")
    hour_ago = time.time() - 4000
    os.utime(stale, (hour_ago, hour_ago))
    spool = Spool(directory, max_bytes=1 << 20)
    assert not stale.exists()
    assert fresh.exists()
    assert spool.items() == []


def test_unsafe_report_ids_stay_inside_the_spool(tmp_path: Path) -> None:
    """An id with path characters is sanitised into the file name."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    path = spool.put("../../etc/passwd", {"id": "x"})
    assert path.parent == tmp_path / "spool"
    assert "/" not in path.name.split("-", 1)[1]


def test_exclusive_lets_one_holder_at_a_time(tmp_path: Path) -> None:
    """exclusive() yields True to the first holder and False to a second, until released."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    other = Spool(tmp_path / "spool", max_bytes=1 << 20)
    with spool.exclusive() as first, other.exclusive() as second:
        assert (first, second) == (True, False)
    with other.exclusive() as again:
        assert again


def _pending_bytes(spool: Spool) -> int:
    """Total size of the pending report files (set-aside files are not counted)."""
    return sum(p.stat().st_size for p in spool.directory.glob("*.json") if p.name[0] != ".")
