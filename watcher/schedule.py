"""Deploy windows (`[schedule]`) and pause deadlines: pure, with the clock passed in.

A window is `DAYS HH:MM-HH:MM` in the schedule's IANA timezone: `"mon-fri 09:00-17:00"`,
`"sat,sun 10:00-12:00"`, `"fri 22:00-02:00"` (past midnight: it ends on Saturday), or
`"09:00-17:00"` alone for every day. `24:00` ends a window at midnight. Times are wall-clock
times of the zone, so a window keeps its local hours across daylight-saving changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from watcher.config_values import parse_duration

Clock = Callable[[], datetime]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^\s*(?:(?P<days>[a-z,\-]+)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*"
                     r"(?P<end>\d{1,2}:\d{2})\s*$", re.IGNORECASE)


def utc_now() -> datetime:
    """The real clock; tests pass their own `Clock` instead."""
    return datetime.now(timezone.utc)


def zone(name: str) -> ZoneInfo:
    """An IANA zone (the `tzdata` package supplies them where the system has none)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r} (use an IANA name like "
                         "\"Europe/Paris\" or \"UTC\")") from None


@dataclass(frozen=True)
class Window:
    text: str
    days: frozenset[int]  # 0 = Monday; the day the window opens
    start: int  # minutes after midnight
    end: int  # minutes after midnight; <= start means it ends the next day

    def spans(self, day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """The window opening on `day`, as aware datetimes."""
        start = _at(day, self.start, tz)
        end_day = day if self.end > self.start else day + timedelta(days=1)
        return start, _at(end_day, self.end, tz)


def _at(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    extra, minutes = divmod(minutes, 24 * 60)
    local = datetime.combine(day + timedelta(days=extra), time(minutes // 60, minutes % 60))
    return local.replace(tzinfo=tz)


def parse_window(text: str) -> Window:
    """`"mon-fri 09:00-17:00"` -> Window; ValueError saying what is wrong."""
    m = _WINDOW.match(text)
    if not m:
        raise ValueError(f"window {text!r} is not \"DAYS HH:MM-HH:MM\" "
                         "(e.g. \"mon-fri 09:00-17:00\")")
    days = _days(m.group("days"), text) if m.group("days") else frozenset(range(7))
    start, end = _minutes(m.group("start"), text), _minutes(m.group("end"), text)
    if start >= 24 * 60:
        raise ValueError(f"window {text!r}: it cannot open at 24:00")
    if start == end:
        raise ValueError(f"window {text!r} opens and closes at the same time")
    return Window(text=text, days=days, start=start, end=end)


def _days(spec: str, text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in spec.lower().split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"window {text!r}: {part!r} is not a day or range of "
                             f"days ({', '.join(DAYS)})")
        a = DAYS.index(first)
        b = DAYS.index(last) if last else a
        out.update((a + i) % 7 for i in range((b - a) % 7 + 1))  # fri-mon wraps
    return frozenset(out)


def _minutes(hhmm: str, text: str) -> int:
    h, m = (int(x) for x in hhmm.split(":"))
    if m > 59 or h > 24 or (h == 24 and m):
        raise ValueError(f"window {text!r}: {hhmm} is not a time of day")
    return h * 60 + m


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...]
    tz: ZoneInfo

    @classmethod
    def parse(cls, windows: Sequence[str], timezone_name: str = "UTC") -> Schedule:
        return cls(tuple(parse_window(w) for w in windows), zone(timezone_name))

    @property
    def always(self) -> bool:
        return not self.windows

    def is_open(self, now: datetime) -> bool:
        """True inside a window (or when there are none)."""
        return self.always or self.current_end(now) is not None

    def current_end(self, now: datetime) -> datetime | None:
        """When the window `now` is in closes; None outside every window."""
        today = now.astimezone(self.tz).date()
        ends = [end for w in self.windows for day in (today - timedelta(days=1), today)
                if day.weekday() in w.days
                for start, end in [w.spans(day, self.tz)] if start <= now < end]
        return max(ends) if ends else None

    def next_open(self, now: datetime) -> datetime | None:
        """When deploys may next happen: `now` inside a window, else the next opening;
        None when there are no windows."""
        if self.always:
            return None
        if self.is_open(now):
            return now
        today = now.astimezone(self.tz).date()
        starts = [start for offset in range(8) for w in self.windows
                  for day in [today + timedelta(days=offset)] if day.weekday() in w.days
                  for start, _ in [w.spans(day, self.tz)] if start > now]
        return min(starts) if starts else None


def parse_until(text: str, now: datetime, tz: ZoneInfo) -> datetime:
    """`--until`: a duration ("2h", "90m", "3600"), a time of day ("18:00", the next one in
    `tz`), or a date and time ("2026-12-01 09:00", in `tz` unless it carries an offset).
    ValueError when it is none of these or lies in the past."""
    text = text.strip()
    try:
        seconds = parse_duration(text)
    except ValueError:
        pass
    else:
        if seconds <= 0:
            raise ValueError("--until needs a duration above zero")
        return now + timedelta(seconds=seconds)
    if re.fullmatch(r"\d{1,2}:\d{2}", text):
        minutes = _minutes(text, text) % (24 * 60)
        local_today = now.astimezone(tz).date()
        at = _at(local_today, minutes, tz)
        return at if at > now else _at(local_today + timedelta(days=1), minutes, tz)
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--until {text!r} is not a duration (\"2h\"), a time (\"18:00\") "
                         "or a date and time (\"2026-12-01 09:00\")") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=tz)
    if at <= now:
        raise ValueError(f"--until {text!r} is in the past")
    return at


def iso(at: datetime) -> str:
    """UTC, to the second, with Z: how state.json and `status` show times."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
