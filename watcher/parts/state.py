"""state.json: the live release, the releases we know, bad commits, history, last check.

Written atomically (temp file, fsync, rename, fsync of the dir) with mode 0600. Crash point:
a kill mid-write leaves a stray `state.json.tmp-*` and the old state.json intact; the next
load ignores the temp file and the next save replaces it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from watcher.errors import TransientError

log = structlog.get_logger()
HISTORY_MAX = 200
VERSION = 1


@dataclass
class ReleaseRecord:
    name: str
    sha: str
    venv: str
    ok: bool = True
    colour: str = ""
    # The newest migration per app when it went live, {app: name} (DESIGN 2a); empty for
    # releases recorded before watcher kept them.
    migrations: dict[str, str] = field(default_factory=dict)
    tag: str = ""  # the git.tag_pattern tag it was deployed from


@dataclass
class State:
    live: str | None = None
    releases: dict[str, ReleaseRecord] = field(default_factory=dict)
    bad: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    last_check: dict[str, Any] = field(default_factory=dict)
    # Contract migrations under way (DESIGN 2a): {"release": name, "migrations": [...]},
    # written before they start and cleared when they end; a kill in between leaves it for
    # the next start, which runs them again.
    contract: dict[str, Any] = field(default_factory=dict)
    # Contract migrations the live release left pending (step 12b failed or was postponed):
    # {"release": name, "migrations": [...]}. Its code does not use what they remove, so the
    # next deploy may run them before its switch (DESIGN 2a: "the next deploy retries them").
    contract_left: dict[str, Any] = field(default_factory=dict)

    # -- queries -------------------------------------------------------------------------
    def live_record(self) -> ReleaseRecord | None:
        return self.releases.get(self.live) if self.live else None

    def left_by_live(self) -> frozenset[str]:
        """The contract migrations the live release left pending (none once another release
        went live: after a rollback the older code may still use what they remove)."""
        left = self.contract_left
        if not self.live or left.get("release") != self.live:
            return frozenset()
        return frozenset(str(m) for m in left.get("migrations", []))

    def previous(self, existing: set[str]) -> ReleaseRecord | None:
        """The newest good release older than the live one that is still on disk."""
        live = self.live or "~"
        candidates = [r for n, r in self.releases.items()
                      if r.ok and n < live and n in existing]
        return max(candidates, key=lambda r: r.name) if candidates else None

    def is_bad(self, sha: str) -> bool:
        return sha in self.bad

    # -- changes -------------------------------------------------------------------------
    def mark_bad(self, sha: str, step: str, reason: str) -> None:
        self.bad[sha] = {"at": iso_utc(), "step": step, "reason": reason[:500]}
        while len(self.bad) > 100:
            self.bad.pop(next(iter(self.bad)))

    def add_history(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        del self.history[:-HISTORY_MAX]

    def forget_missing(self, existing: set[str]) -> None:
        for name in [n for n in self.releases if n not in existing and n != self.live]:
            del self.releases[name]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "live": self.live,
            "releases": {n: asdict(r) for n, r in self.releases.items()},
            "bad": self.bad,
            "history": self.history,
            "last_check": self.last_check,
            "contract": self.contract,
            "contract_left": self.contract_left,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        return cls(
            live=data.get("live"),
            releases={n: ReleaseRecord(**r) for n, r in data.get("releases", {}).items()},
            bad=dict(data.get("bad", {})),
            history=list(data.get("history", [])),
            last_check=dict(data.get("last_check", {})),
            contract=dict(data.get("contract", {})),
            contract_left=dict(data.get("contract_left", {})),
        )


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> State:
        try:
            state = State.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return State()
        except OSError as exc:
            # Unreadable is not corrupt (EACCES for another user, EMFILE, EIO): moving the
            # file aside would forget the live release and the bad commits. Try again later.
            raise TransientError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        except (ValueError, TypeError, AttributeError) as exc:
            # A corrupt file (not JSON, or not our document) cannot come from our writes (they
            # are atomic); keep it for a human and start from what is on disk.
            aside = self.path.with_suffix(f".corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("state.corrupt", path=str(self.path), moved_to=str(aside), error=str(exc))
            return State()
        return state

    def save(self, state: State) -> None:
        write_atomic(self.path, json.dumps(state.to_json(), indent=1, sort_keys=True))


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def iso_utc(ts: float | None = None) -> str:
    """A UTC timestamp to the second, as state.json and `watcher status` show them."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class PauseFile:
    """`.watcher/pause.json`: who paused automatic deploys, why, since and until when.

    Its own file, not a field of state.json: `watcher pause` must not wait for a deploy's
    lock, and a deploy that loaded state.json before the pause would write its old copy
    back over it. Crash point: written atomically like state.json, so a kill leaves either
    the old pause or the new one; `resume` removes the file (a kill before the unlink leaves
    the pause in force, and running `resume` again ends it).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TransientError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        except ValueError:
            # Ours are written atomically; a hand-edited file that is not JSON still pauses.
            log.error("pause.unreadable", path=str(self.path))
            return {"by": "?", "reason": f"{self.path.name} is not valid JSON", "at": "",
                    "until": None}
        return data if isinstance(data, dict) else None

    def save(self, by: str, reason: str, at: str, until: str | None) -> dict[str, Any]:
        pause = {"by": by, "reason": reason, "at": at, "until": until}
        write_atomic(self.path, json.dumps(pause, indent=1, sort_keys=True))
        return pause

    def clear(self) -> dict[str, Any] | None:
        """Remove the pause; the one that was in force, if any."""
        pause = self.load()
        self.path.unlink(missing_ok=True)
        return pause
