"""What gets deployed, and when (DESIGN §5): pure decisions, tested with tables.

- `pick_tag`: with `git.tag_pattern`, the highest semver tag among the remote's refs.
- `PathFilter`: whether a head's changed paths are worth a deploy (`git.paths`,
  `git.ignore_paths`, gitignore-style through `pathspec`).
- `hold`: whether a pause or the deploy windows keep an automatic deploy back, and until when.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from packaging.version import InvalidVersion, Version

from watcher.schedule import Schedule, from_iso


# -- tags ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tag:
    name: str
    sha: str  # the commit the tag points at (peeled)
    version: Version


def tag_version(name: str) -> Version | None:
    """`v1.2.3`, `1.2.3`, `v1.2.0-rc1` -> Version; None for a name that is not a version."""
    text = name[1:] if name[:1] in ("v", "V") and name[1:2].isdigit() else name
    if not text[:1].isdigit():
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def pick_tag(tags: Mapping[str, str], pattern: str, prereleases: bool) -> Tag | None:
    """The highest version among tags {name: commit sha} whose name matches the glob
    `pattern`; pre-releases (and dev releases) only with `prereleases`."""
    best: Tag | None = None
    for name, sha in tags.items():
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        version = tag_version(name)
        if version is None or (version.is_prerelease and not prereleases):
            continue
        # Equal versions ("v1.2.0" and "1.2.0"): the name decides, so the choice is stable.
        if best is None or (version, name) > (best.version, best.name):
            best = Tag(name, sha, version)
    return best


def peeled_tags(ls_remote: str) -> dict[str, str]:
    """`git ls-remote --tags` output -> {tag name: commit sha}; an annotated tag's `^{}` line
    (the commit it points at) wins over the tag object's own sha."""
    tags: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for line in ls_remote.splitlines():
        sha, _, ref = line.strip().partition("\t")
        if not ref.startswith("refs/tags/") or len(sha) != 40:
            continue
        name = ref[len("refs/tags/"):]
        if name.endswith("^{}"):
            peeled[name[:-3]] = sha
        else:
            tags[name] = sha
    return {name: peeled.get(name, sha) for name, sha in tags.items()}


# -- paths -----------------------------------------------------------------------------
class PathFilter:
    """`git.paths` (a change must match one) and `git.ignore_paths` (changes only there do
    not count), both gitignore-style: `docs/`, `*.md`, `/setup.cfg`, `!keep.md`."""

    def __init__(self, paths: Sequence[str], ignore: Sequence[str]) -> None:
        self.paths = _spec(paths) if paths else None
        self.ignore = _spec(ignore) if ignore else None

    @property
    def active(self) -> bool:
        return self.paths is not None or self.ignore is not None

    def relevant(self, changed: Iterable[str]) -> list[str]:
        """The changed paths that call for a deploy."""
        out = []
        for path in changed:
            if self.paths is not None and not self.paths.match_file(path):
                continue
            if self.ignore is not None and self.ignore.match_file(path):
                continue
            out.append(path)
        return out

    def skip_reason(self, changed: frozenset[str] | None) -> str | None:
        """Why a head with these changes is skipped; None when it is deployed (also when the
        changes are unknown: no live release, or history rewritten)."""
        if not self.active or changed is None or self.relevant(changed):
            return None
        if not changed:
            return "no file changed"
        where = []
        if self.paths is not None:
            where.append("outside git.paths")
        if self.ignore is not None:
            where.append("inside git.ignore_paths")
        return f"{len(changed)} changed path(s), all {' or '.join(where)}"


def _spec(patterns: Sequence[str]) -> Any:
    """A gitignore-style matcher; pathspec is imported only by configs that use patterns."""
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(patterns)


def check_patterns(patterns: Sequence[str]) -> None:
    """ValueError naming a pattern that pathspec cannot compile."""
    for p in patterns:
        try:
            _spec([p])
        except Exception as exc:  # pathspec raises several types for a bad pattern
            raise ValueError(f"pattern {p!r}: {exc}") from None


# -- holds -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Hold:
    reason: str  # "paused" | "outside_window"
    until: datetime | None  # when it ends by itself, if known
    detail: str


def pause_active(pause: Mapping[str, object] | None, now: datetime) -> bool:
    """A pause with an `until` in the past has ended by itself."""
    if not pause:
        return False
    until = pause.get("until")
    return not (isinstance(until, str) and until and from_iso(until) <= now)


def hold(pause: Mapping[str, object] | None, schedule: Schedule,
         now: datetime) -> Hold | None:
    """What keeps an automatic deploy back at `now`: a pause first, then the windows."""
    if pause and pause_active(pause, now):
        until = pause.get("until")
        by, why = pause.get("by") or "?", pause.get("reason") or ""
        detail = f"paused by {by}" + (f": {why}" if why else "")
        return Hold("paused", from_iso(until) if isinstance(until, str) and until else None,
                    detail)
    if not schedule.is_open(now):
        return Hold("outside_window", schedule.next_open(now),
                    "outside schedule.windows (" + ", ".join(
                        w.text for w in schedule.windows) + ")")
    return None
