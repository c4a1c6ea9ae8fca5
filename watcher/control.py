"""`watcher pause` / `resume`, and what `status` says about holds (pause, windows, a head
waiting). The decisions themselves are pure, in `gates.py` and `schedule.py`."""

from __future__ import annotations

import os
import pwd
from datetime import datetime
from typing import Any

import structlog

from watcher.config import Config
from watcher.errors import UsageError
from watcher.gates import hold, pause_active
from watcher.parts.state import PauseFile, State
from watcher.schedule import Schedule, iso, parse_until, utc_now

log = structlog.get_logger()


def current_user() -> str:
    """The operator: the login name, with the sudo caller when run through sudo."""
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = str(os.getuid())
    sudo = os.environ.get("SUDO_USER")
    return f"{name} (sudo by {sudo})" if sudo and sudo != name else name


def pause_file(cfg: Config) -> PauseFile:
    return PauseFile(cfg.state_dir / "pause.json")


def schedule_of(cfg: Config) -> Schedule:
    return Schedule.parse(cfg.schedule.windows, cfg.schedule.timezone)


def pause(cfg: Config, reason: str, until: str | None, *, by: str | None = None,
          now: datetime | None = None) -> dict[str, Any]:
    """Hold every automatic deploy back until `resume` (or `until`)."""
    now = now or utc_now()
    end = None
    if until:
        try:
            end = iso(parse_until(until, now, schedule_of(cfg).tz))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = pause_file(cfg).save(by or current_user(), reason, iso(now), end)
    log.info("pause.set", by=record["by"], reason=reason, until=end)
    return record


def resume(cfg: Config) -> dict[str, Any] | None:
    """End the pause; the one that was in force (None when there was none)."""
    record = pause_file(cfg).clear()
    log.info("pause.cleared", was=record)
    return record


def active_pause(cfg: Config, now: datetime | None = None) -> dict[str, Any] | None:
    """The pause in force, or None (also once its `until` has passed)."""
    record = pause_file(cfg).load()
    return record if pause_active(record, now or utc_now()) else None


def hold_status(cfg: Config, state: State, now: datetime | None = None) -> dict[str, Any]:
    """`status`'s view: the pause, the windows, and the head waiting for them."""
    now = now or utc_now()
    record = active_pause(cfg, now)
    schedule = schedule_of(cfg)
    held = hold(record, schedule, now)
    nxt = schedule.next_open(now)
    waiting = None
    lc = state.last_check
    if lc.get("result") == "waiting" and lc.get("remote_sha"):
        live = state.live_record()
        if live is None or live.sha != lc.get("remote_sha"):
            waiting = {"sha": lc.get("remote_sha"), "tag": lc.get("tag"),
                       "since": lc.get("waiting_since") or lc.get("at"),
                       "reason": held.reason if held else lc.get("hold"),
                       "until": iso(held.until) if held and held.until else None}
    skipped = ({"sha": lc.get("remote_sha"), "reason": lc.get("reason")}
               if lc.get("result") == "skipped" else None)
    return {
        "skipped": skipped,
        "paused": record,
        "schedule": {"windows": list(cfg.schedule.windows), "timezone": cfg.schedule.timezone,
                     "open": schedule.is_open(now),
                     "next_open": iso(nxt) if nxt and not schedule.is_open(now) else None},
        "waiting": waiting,
    }


def print_hold_status(data: dict[str, Any]) -> None:
    record, sched, waiting = data["paused"], data["schedule"], data["waiting"]
    if data.get("skipped"):
        print(f"skipped:      {str(data['skipped']['sha'])[:12]}: {data['skipped']['reason']}")
    if record:
        until = f" until {record['until']}" if record.get("until") else " until `watcher resume`"
        why = f": {record['reason']}" if record.get("reason") else ""
        print(f"paused:       by {record.get('by')} at {record.get('at')}{until}{why}")
    if sched["windows"]:
        state = ("open now" if sched["open"] else f"closed, next opens {sched['next_open']}")
        print(f"windows:      {', '.join(sched['windows'])} ({sched['timezone']}): {state}")
    if waiting:
        tag = f" ({waiting['tag']})" if waiting.get("tag") else ""
        until = f" until {waiting['until']}" if waiting.get("until") else ""
        print(f"waiting:      {str(waiting['sha'])[:12]}{tag} since {waiting['since']}, "
              f"held back ({waiting['reason']}){until}")

