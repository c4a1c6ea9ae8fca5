"""`watcher status --fleet [--json]`: every server's heartbeat, read from Redis (DESIGN §8).

Shows which servers run which commit, how old each heartbeat is (stale ones flagged: that
server's watcher is stopped, cut off, or stuck), and the commits marked bad for the fleet
with the servers still running them: after a rollback on one server, those that had already
switched stay on the commit (they are healthy), and this is where the split shows.
"""

from __future__ import annotations

from typing import Any

from watcher.config import Config
from watcher.errors import UsageError
from watcher.parts.fleet import Fleet


def fleet_report(fleet: Fleet) -> dict[str, Any]:
    servers = fleet.servers()
    bad = fleet.bad_marks()
    for sha, mark in bad.items():
        mark["live_on"] = sorted(s["host"] for s in servers if s.get("sha") == sha)
    shas = {s.get("sha") for s in servers if s.get("sha")}
    return {"servers": servers, "bad": bad, "split": len(shas) > 1,
            "stale": sorted(s["host"] for s in servers if s["stale"])}


def collect(cfg: Config) -> dict[str, Any]:
    """What `status --fleet --json` prints; raises FleetUnreachable (exit 3)."""
    if cfg.fleet is None:
        raise UsageError("status --fleet needs [fleet] redis_url in the config")
    fleet = Fleet(cfg.fleet, cfg.app.name)
    try:
        return {"app": cfg.app.name, "host": fleet.host, **fleet_report(fleet)}
    finally:
        fleet.close()


def render(data: dict[str, Any]) -> list[str]:
    """The text form: one line per server, then the bad commits and where they run."""
    lines = [f"app:   {data['app']} (this server: {data['host']})",
             f"{'host':<16} {'sha':<12} {'release':<30} {'outcome':<12} {'check':<10} "
             "heartbeat"]
    if not data["servers"]:
        lines.append("no heartbeats yet")
    for s in data["servers"]:
        sha = str(s.get("sha") or "-")[:12]
        flag = "  STALE" if s["stale"] else ""
        lines.append(f"{s['host']:<16} {sha:<12} {s.get('release') or '-':<30} "
                     f"{s.get('outcome') or '-':<12} {s.get('check') or '-':<10} "
                     f"{s['age_s']:>6.0f}s ago{flag}")
    for sha, mark in data["bad"].items():
        on = ", ".join(mark["live_on"]) or "no server"
        lines.append(f"bad:   {sha[:12]} ({mark.get('step')} on {mark.get('host')}: "
                     f"{mark.get('message')}); live on {on}")
    if data["split"]:
        lines.append("split: the servers run different commits")
    return lines
