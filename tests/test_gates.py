"""What gets deployed (watcher/gates.py): semver tags from a real remote, path filters, holds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from support.site import git

from watcher.config import GitConfig
from watcher.gates import PathFilter, hold, peeled_tags, pick_tag
from watcher.parts.gitsource import GitSource
from watcher.schedule import Schedule, iso

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)  # a Monday


@pytest.fixture(scope="module")
def tagged_remote(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A bare remote with lightweight and annotated tags: {tag: commit sha}."""
    base = tmp_path_factory.mktemp("tags")
    remote, work = base / "remote.git", base / "work"
    git("init", "--bare", "-q", "-b", "main", str(remote), cwd=base)
    git("init", "-q", "-b", "main", str(work), cwd=base)
    shas: dict[str, str] = {}
    for i, tag in enumerate(["v1.9.0", "v1.10.0", "1.10.1", "v1.11.0rc1", "v2.0.0-rc.1",
                             "release-3", "v1.10.1-beta", "docs-v9.0.0"]):
        (work / "f").write_text(f"{i}\n")
        git("add", "f", cwd=work)
        git("commit", "-q", "-m", f"commit {i}", cwd=work)
        if i % 2:
            git("tag", "-a", "-m", f"annotated {tag}", tag, cwd=work)
        else:
            git("tag", tag, cwd=work)
        shas[tag] = git("rev-parse", "HEAD", cwd=work)
    git("push", "-q", str(remote), "main", "--tags", cwd=work)
    return remote, shas


def test_highest_semver_tag_from_ls_remote(tagged_remote: tuple[Path, dict[str, str]],
                                           tmp_path: Path) -> None:
    """Through real `git ls-remote --tags` (nothing fetched: no mirror is created), `v*`
    picks v1.10.0 over v1.9.0 and "1.10.1" only with a pattern that admits it; pre-releases
    only with `prereleases`; annotated tags resolve to their commit."""
    remote, shas = tagged_remote
    source = GitSource(GitConfig(remote=str(remote)), tmp_path / "mirror")
    tags = peeled_tags(source.remote_tags())
    assert not (tmp_path / "mirror").exists()
    assert tags["v1.10.0"] == shas["v1.10.0"]  # annotated: the peeled commit
    best = pick_tag(tags, "v*", prereleases=False)
    assert best is not None and (best.name, best.sha) == ("v1.10.0", shas["v1.10.0"])
    pre = pick_tag(tags, "v*", prereleases=True)
    assert pre is not None and pre.name == "v2.0.0-rc.1"
    anything = pick_tag(tags, "*", prereleases=False)
    assert anything is not None and anything.name == "1.10.1"  # docs-v9.0.0 is no version
    assert pick_tag(tags, "release-*", prereleases=True) is None


@pytest.mark.parametrize(("names", "pattern", "pre", "expected"), [
    (["v1.9.0", "v1.10.0"], "v*", False, "v1.10.0"),
    (["v1.2.3", "1.2.4"], "*", False, "1.2.4"),
    (["v1.2.0", "v1.3.0-rc1"], "v*", False, "v1.2.0"),
    (["v1.2.0", "v1.3.0-rc1"], "v*", True, "v1.3.0-rc1"),
    (["v1.3.0-rc1", "v1.3.0"], "v*", True, "v1.3.0"),  # the release beats its candidate
    (["v1.3.0rc2", "v1.3.0rc10"], "v*", True, "v1.3.0rc10"),
    (["v1.3.0.dev1"], "v*", False, None),
    (["vnext", "latest"], "*", True, None),
    (["app-1.0.0"], "v*", False, None),
])
def test_pick_tag_table(names: list[str], pattern: str, pre: bool, expected: str | None) -> None:
    """Semver order, not string order; v-prefix optional; pre-releases opt-in."""
    best = pick_tag({n: "a" * 40 for n in names}, pattern, pre)
    assert (best.name if best else None) == expected


@pytest.mark.parametrize(("paths", "ignore", "changed", "skipped"), [
    ([], ["docs/"], {"docs/index.md", "docs/img/a.png"}, True),
    ([], ["docs/"], {"docs/index.md", "pages/views.py"}, False),
    ([], ["*.md"], {"README.md", "docs/x.md"}, True),
    ([], ["*.md", "!CHANGELOG.md"], {"CHANGELOG.md"}, False),
    (["backend/"], [], {"frontend/app.js"}, True),
    (["backend/"], [], {"backend/app/views.py"}, False),
    (["backend/", "requirements*.txt"], ["*.md"], {"backend/README.md"}, True),
    (["/manage.py"], [], {"sub/manage.py"}, True),
    ([], [], {"docs/index.md"}, False),  # no filter: everything deploys
    ([], ["docs/"], None, False),  # unknown changes (first deploy): deploy
])
def test_path_filter_table(paths: list[str], ignore: list[str], changed: set[str] | None,
                           skipped: bool) -> None:
    """gitignore-style `paths` and `ignore_paths`: a head is skipped only when every changed
    path is outside `paths` or inside `ignore_paths`."""
    reason = PathFilter(paths, ignore).skip_reason(
        frozenset(changed) if changed is not None else None)
    assert (reason is not None) is skipped, reason


def test_hold_pause_first_then_window() -> None:
    """A pause holds whatever the windows say and ends by itself at `until`; outside the
    windows the hold names the next opening."""
    schedule = Schedule.parse(["mon-fri 12:00-13:00"], "UTC")
    pause = {"by": "ops", "reason": "db upgrade", "until": iso(NOW + timedelta(hours=1))}
    h = hold(pause, schedule, NOW)
    assert h is not None and h.reason == "paused" and "ops: db upgrade" in h.detail
    assert h.until == NOW + timedelta(hours=1)
    later = hold(pause, schedule, NOW + timedelta(hours=1))  # the pause has ended
    assert later is not None and later.reason == "outside_window"
    assert later.until == NOW + timedelta(hours=2)
    assert hold(pause, schedule, NOW + timedelta(hours=2, minutes=5)) is None
    forever = hold({"by": "ops", "reason": "", "until": None}, Schedule.parse([], "UTC"), NOW)
    assert forever is not None and forever.until is None


def test_ls_remote_of_a_missing_remote_is_transient(tmp_path: Path) -> None:
    """A remote that cannot be read is RemoteUnreachable (exit 3), not a crash."""
    from watcher.errors import RemoteUnreachable

    source = GitSource(GitConfig(remote=str(tmp_path / "nope.git"), timeout=10), tmp_path / "m")
    with pytest.raises(RemoteUnreachable):
        source.remote_tags()


def test_commits_lists_what_a_deploy_brings_newest_first(tmp_path: Path) -> None:
    """The report's commit list comes from one `git log` in the mirror: the commits between
    the live sha and the new one, newest first, with author and subject (non-ASCII kept);
    with the live sha unknown, the new commit's history up to the limit."""
    remote, work = tmp_path / "remote.git", tmp_path / "work"
    git("init", "--bare", "-q", "-b", "main", str(remote), cwd=tmp_path)
    git("init", "-q", "-b", "main", str(work), cwd=tmp_path)
    git("remote", "add", "origin", str(remote), cwd=work)
    shas = []
    for n, subject in enumerate(["First", "Zweite Änderung: ünïcode", "Third\n\nA body"]):
        (work / "f.txt").write_text(f"{n}\n")
        git("add", "-A", cwd=work)
        git("commit", "-qm", subject, cwd=work)
        shas.append(git("rev-parse", "HEAD", cwd=work))
    git("push", "-q", "origin", "main", cwd=work)
    source = GitSource(GitConfig(remote=str(remote)), tmp_path / "mirror")
    source.fetch()
    brought = source.commits(shas[0], shas[2])
    assert [(c.sha, c.author, c.subject) for c in brought] == [
        (shas[2], "Dev", "Third"), (shas[1], "Dev", "Zweite Änderung: ünïcode")]
    assert [c.sha for c in source.commits("f" * 40, shas[2], limit=2)] == shas[:0:-1]
