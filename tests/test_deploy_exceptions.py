"""Whatever goes wrong inside a deploy is a failed step: a report, a history entry and a
bad mark, never a crash; and a hint replayed in a loop costs one ls-remote per check at a
bounded rate, not a deploy per hint. Real site, real `watcher --once` and `watcher run`."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable

import pytest
from support.daemon import CHECK_EVENTS, DaemonProcess, post_github_push, webhook_site
from support.site import Site, git

from watcher.daemon.hints import Hints

SECRET = "canary-replay-secret-31c9"
SETTINGS = "mysite/settings.py"


class Box:
    def __init__(self, site: Site, port: int) -> None:
        self.site, self.port = site, port
        self.settings = site.read(SETTINGS)


@pytest.fixture(scope="module")
def box(site_factory: Callable[..., Site], tmp_path_factory: pytest.TempPathFactory) -> Box:
    return Box(*webhook_site(site_factory, tmp_path_factory.mktemp("secret"), SECRET))


def planted_marker(line: str) -> str:
    """Settings that print `line` as Django exits: the inspection reads the last marker."""
    return f"\nimport atexit as _atexit\n_atexit.register(print, {line!r})\n"


def reported(box: Box, sha: str, outcome: str) -> bool:
    return any(sha in r.body.decode(errors="replace") and f'"{outcome}"' in
               r.body.decode(errors="replace") for r in box.site.api.requests)


@pytest.mark.parametrize(("fault", "error"), [
    ("key", "KeyError"),
    ("json", "JSONDecodeError"),
    ("tar", "escape"),
])
def test_an_unexpected_error_is_a_failed_step_with_report_history_and_bad_mark(
        box: Box, fault: str, error: str) -> None:
    """Inspection output without the expected keys (KeyError), not JSON (JSONDecodeError),
    or an archive the extraction refuses: exit 1, a failed step in the report and in the
    history, the commit marked bad, the live release serving (it was `watcher.crashed`)."""
    site = box.site
    live = site.live_release()
    if fault == "tar":
        os.symlink("/etc", site.work / "escape")
        sha = site.commit({"pages/marker.py": "T = 1\n"}, "A link out of the release")
        git("rm", "-q", "escape", cwd=site.work)
    else:
        line = "WATCHER-INSPECT {}" if fault == "key" else "WATCHER-INSPECT {not json"
        sha = site.commit({SETTINGS: box.settings + planted_marker(line)}, f"Marker {fault}")
    result = site.watcher("--once")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "watcher.crashed" not in result.stdout + result.stderr
    state = site.state()
    step = "export" if fault == "tar" else "check"
    assert state["bad"][sha]["step"] == step
    entry = state["history"][-1]
    assert (entry["to_sha"], entry["outcome"]) == (sha, "failed")
    assert error in entry["error"]["message"]
    assert reported(box, sha, "failed")
    assert site.live_release() == live
    site.commit({SETTINGS: box.settings}, "Put the settings back")


def test_a_replayed_hook_deploys_once_and_checks_at_a_bounded_rate(box: Box) -> None:
    """Under `watcher run`, a signed hook replayed 98 times in 5 s for a commit that fails:
    one deploy attempt (it was 99), and the checks that follow are few, each only an
    ls-remote (no step runs) noting the commit as known bad."""
    site = box.site
    bad = site.commit({SETTINGS: box.settings + planted_marker("WATCHER-INSPECT {}")},
                      "Marker again")
    with DaemonProcess(site, git_interval="60s") as d:  # type: ignore[arg-type]
        d.wait_for("deploy.finished", timeout=60)
        started = time.monotonic()
        statuses = []
        for _ in range(98):  # ~5 s on a quiet machine; longer on a busy one
            statuses.append(post_github_push(box.port, SECRET, bad))
            time.sleep(0.04)
        took = time.monotonic() - started
        assert statuses.count(202) >= 90
        time.sleep(6.0)  # a held-back hint wakes the loop once, at the end of its gap
        assert len(d.named("deploy.start")) == 1
        known_bad = d.named("check.known_bad")
        # One wake per 5 s gap while they came, and the held-back one after: not 98.
        assert 1 <= len(known_bad) <= 2 + int(took // 5), (len(known_bad), took)
        after = [e for e in d.events() if e["event"] in CHECK_EVENTS | {"step.start"}]
        first_known = after.index(known_bad[0])
        assert all(e["event"] == "check.known_bad" for e in after[first_known:])
        assert d.stop() == 0
    site.commit({SETTINGS: box.settings}, "Put the settings back")


def test_hints_are_rate_limited_per_source_and_never_lost() -> None:
    """98 hints from one source in 0.5 s wake a busy loop at most once per gap, the last
    one still wakes it after the gap; another source and a shutdown are not held back."""
    hints = Hints(gap=0.2)
    wakes: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if hints.wait(0.05):
                wakes.append(time.monotonic())
                time.sleep(0.01)  # a quick check

    consumer = threading.Thread(target=loop)
    consumer.start()
    try:
        for _ in range(98):
            # Read before the hint: a wake it causes comes after this, even one that lands
            # between the hint and the next line.
            last_hint = time.monotonic()
            hints.hint("github")
            time.sleep(0.005)
        deadline = last_hint + 3.0
        while not (wakes and wakes[-1] > last_hint) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert wakes and wakes[-1] > last_hint  # the held-back hint was not lost
        gaps = [b - a for a, b in itertools.pairwise(wakes)]
        assert len(wakes) > 1 and min(gaps) >= 0.2 - 0.05, gaps  # once per gap at most
        before = len(wakes)
        hints.hint("gitlab")
        while len(wakes) == before and time.monotonic() < deadline + 3.0:
            time.sleep(0.01)
        assert len(wakes) > before
    finally:
        stop.set()
        consumer.join()



def test_a_held_back_hint_wakes_a_loop_waiting_for_its_next_poll() -> None:
    """The loop waits for its next poll (a long timeout) when a hint inside the gap is held
    back: it wakes as the gap ends, not at the poll (the bug fixed in 059fd38 kept it asleep
    up to git.interval)."""
    hints = Hints(gap=0.3)
    hints.hint("github")
    assert hints.wait(0.0) and hints.take_trigger() == "webhook:github"  # the check it started
    woke: list[float] = []
    waiter = threading.Thread(target=lambda: woke.append(hints.wait(30.0) and time.monotonic()))
    waiter.start()
    time.sleep(0.05)  # the loop is waiting now
    sent = time.monotonic()
    hints.hint("github")  # inside the gap: held back
    waiter.join(timeout=10)
    assert not waiter.is_alive() and woke and woke[0], "the held-back hint never woke the loop"
    assert woke[0] - sent < 2.0, woke[0] - sent
    assert hints.held_back == 1
