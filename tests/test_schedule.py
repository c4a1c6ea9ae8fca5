"""Deploy windows and `--until` (watcher/schedule.py), with the clock passed in: no waiting."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from watcher.config_load import load
from watcher.errors import ConfigError
from watcher.schedule import Schedule, parse_until, parse_window, zone

UTC = timezone.utc
PARIS = zone("Europe/Paris")


def at(text: str, tz: object = UTC) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=tz)  # type: ignore[arg-type]


# 2026-11-30 is a Monday.
@pytest.mark.parametrize(("windows", "now", "open_", "next_open"), [
    (["mon-fri 09:00-17:00"], "2026-11-30 08:59", False, "2026-11-30 09:00"),
    (["mon-fri 09:00-17:00"], "2026-11-30 09:00", True, "2026-11-30 09:00"),
    (["mon-fri 09:00-17:00"], "2026-11-30 17:00", False, "2026-12-01 09:00"),
    (["mon-fri 09:00-17:00"], "2026-12-04 18:00", False, "2026-12-07 09:00"),  # fri -> mon
    (["sat,sun 10:00-12:00"], "2026-11-30 10:30", False, "2026-12-05 10:00"),
    (["fri 22:00-02:00"], "2026-12-05 01:59", True, "2026-12-05 01:59"),  # sat, past midnight
    (["fri 22:00-02:00"], "2026-12-05 02:00", False, "2026-12-11 22:00"),
    (["fri-mon 12:00-13:00"], "2026-11-30 12:30", True, "2026-11-30 12:30"),  # range wraps
    (["fri-mon 12:00-13:00"], "2026-12-01 12:30", False, "2026-12-04 12:00"),
    (["20:00-24:00"], "2026-12-02 23:59", True, "2026-12-02 23:59"),  # every day, to midnight
    (["mon 09:00-10:00", "wed 15:00-16:00"], "2026-11-30 11:00", False, "2026-12-02 15:00"),
])
def test_windows_table(windows: list[str], now: str, open_: bool, next_open: str) -> None:
    """Each window opens and closes on its days and hours (ranges wrap the week, windows
    past midnight end the next day), and the next opening is the earliest one ahead."""
    schedule = Schedule.parse(windows, "UTC")
    assert schedule.is_open(at(now)) is open_
    assert schedule.next_open(at(now)) == at(next_open)


def test_windows_keep_local_hours_across_daylight_saving() -> None:
    """A Europe/Paris window opens at 09:00 Paris time in winter (08:00 UTC) and in summer
    (07:00 UTC)."""
    schedule = Schedule.parse(["mon-fri 09:00-17:00"], "Europe/Paris")
    assert schedule.next_open(at("2026-11-30 06:00")) == at("2026-11-30 08:00")
    assert schedule.next_open(at("2026-06-01 06:00")) == at("2026-06-01 07:00")
    assert schedule.is_open(at("2026-06-01 07:00")) and not schedule.is_open(at("2026-06-01 06:59"))


def test_no_windows_means_any_time() -> None:
    """Without windows every moment is open and there is no next opening to wait for."""
    schedule = Schedule.parse([], "UTC")
    now = at("2026-11-29 03:00")
    assert schedule.is_open(now) and schedule.next_open(now) is None


@pytest.mark.parametrize("text", ["mon-fri 9-17", "funday 09:00-17:00", "mon 25:00-26:00",
                                  "mon 09:00-09:00", "mon 09:60-10:00", "mon 24:00-01:00", ""])
def test_bad_window_is_refused(text: str) -> None:
    """A window that does not parse raises ValueError quoting it."""
    with pytest.raises(ValueError, match="window"):
        parse_window(text)


def test_bad_window_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """`schedule.windows` with one bad entry is a config error naming the key and the window;
    an unknown timezone names `schedule.timezone`."""
    base = (f'[app]\nname = "x"\nroot = "{tmp_path}"\n[git]\nremote = "/r.git"\n'
            '[supervisor]\nprograms = ["x"]\n')
    path = tmp_path / "w.toml"
    path.write_text(base + '[schedule]\nwindows = ["mon-fri 09:00-17:00", "weekdays 9 to 5"]\n')
    with pytest.raises(ConfigError, match=r"schedule\.windows: window 'weekdays 9 to 5'"):
        load(path, environ={})
    path.write_text(base + '[schedule]\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError, match=r"schedule\.timezone: unknown timezone"):
        load(path, environ={})
    path.write_text(base + '[schedule]\nwindows = ["sat 10:00-12:00"]\ntimezone = "Asia/Tokyo"\n')
    assert load(path, environ={}).schedule.windows == ("sat 10:00-12:00",)


@pytest.mark.parametrize(("text", "expected"), [
    ("2h", "2026-11-30 12:00"),
    ("90m", "2026-11-30 11:30"),
    ("3600", "2026-11-30 11:00"),
    ("18:00", "2026-11-30 17:00"),  # Paris 18:00 = 17:00 UTC in winter, today
    ("09:00", "2026-12-01 08:00"),  # already past in Paris today: tomorrow
    ("2026-12-01 09:00", "2026-12-01 08:00"),  # naive: Paris
    ("2026-12-01T09:00Z", "2026-12-01 09:00"),
])
def test_until_forms(text: str, expected: str) -> None:
    """`--until` takes a duration, a time of day (the next one, in the schedule's zone) or a
    date and time."""
    now = at("2026-11-30 10:00")
    assert parse_until(text, now, PARIS) == at(expected)


@pytest.mark.parametrize("text", ["yesterday", "2026-11-29 09:00", "0s"])
def test_until_refuses_the_past_and_nonsense(text: str) -> None:
    """An `--until` in the past, of zero length or unreadable is refused."""
    with pytest.raises(ValueError):
        parse_until(text, at("2026-11-30 10:00"), PARIS)


def test_current_end_is_when_the_window_closes() -> None:
    """Inside a window, `current_end` is its close; outside, None."""
    schedule = Schedule.parse(["mon-fri 09:00-17:00"], "UTC")
    assert schedule.current_end(at("2026-11-30 10:00")) == at("2026-11-30 17:00")
    assert schedule.current_end(at("2026-11-30 10:00") + timedelta(hours=8)) is None
