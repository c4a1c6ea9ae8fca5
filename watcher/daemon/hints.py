"""What wakes the poll loop between checks: hints from webhooks, `watcher trigger`, SIGUSR1
and a shutdown, coalesced into one flag, rate-limited per source, and the first one naming
the next check's trigger.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger()
HINT_GAP = 5.0  # seconds between two wake-ups by the same hint source


class Hints:
    """A wake-up flag: hints set it, the loop clears it before each check. The first hint
    since the last check names the check's trigger (DESIGN §7).

    Rate-limited per source: a source (a forge's route, `trigger`, SIGUSR1) wakes the loop at
    most once per `gap` seconds. A hint inside the gap is not lost: when no check is due
    already, it wakes the loop as the gap ends, however many came (a signed hook replayed
    98 times in 5 s made 99 deploy attempts). A shutdown is never held back.
    """

    def __init__(self, gap: float = HINT_GAP, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.gap, self.clock = gap, clock
        self._cond = threading.Condition()
        self._fired = False
        self._last: dict[str, float] = {}  # when each source last woke the loop
        self._due: dict[str, float] = {}  # held-back hints: when each may wake it
        self._source: str | None = None  # the first hint since the last check
        self.received = 0
        self.held_back = 0

    def hint(self, source: str) -> None:
        with self._cond:
            self.received += 1
            if self._source is None and source != "shutdown":
                self._source = source
            now = self.clock()
            last = self._last.get(source)
            if source == "shutdown" or last is None or now - last >= self.gap:
                self._last[source] = now
                self._due.pop(source, None)  # this wake-up is the one it was held for
                self._fired = True
                self._cond.notify_all()
                due = None
            elif self._fired:
                due = None  # a check is already due: this hint rides along with it
            else:
                due = self._due.setdefault(source, last + self.gap)
                self.held_back += 1
                self._cond.notify_all()  # a waiting loop recomputes its timeout: wake at `due`
        if due is None:
            log.info("hint.received", source=source)
        else:
            log.info("hint.received", source=source, held_back_s=round(due - now, 2))

    def wait(self, timeout: float) -> bool:
        """Until a hint wakes the loop (True) or `timeout` passes (False)."""
        with self._cond:
            end = self.clock() + timeout
            while True:
                now = self.clock()
                for source, due in list(self._due.items()):
                    if due <= now:  # held back until now: wakes the loop (or rides along)
                        del self._due[source]
                        self._last[source] = now
                        self._fired = True
                if self._fired or now >= end:
                    break
                self._cond.wait(min([end, *self._due.values()]) - now)
            fired, self._fired = self._fired, False
            return fired

    def take_trigger(self) -> str:
        """"poll", "webhook:<forge>" or "trigger" (`watcher trigger`, SIGUSR1, `resume`) for
        the check about to run; the slate is clean for the next one."""
        with self._cond:
            source, self._source = self._source, None
        if source is None:
            return "poll"
        return "trigger" if source in ("trigger", "sigusr1") else f"webhook:{source}"
