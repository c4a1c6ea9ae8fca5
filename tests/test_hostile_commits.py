"""What a commit contains (symlinks, a file named REVISION) never makes watcher read, write
or delete outside the release it builds (DESIGN §3): real git exports, real release trees."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest
from support.faults import Bench
from support.site import git

from watcher.config import GitConfig
from watcher.errors import StepFailed
from watcher.parts import fs, releases
from watcher.parts.gitsource import GitSource
from watcher.parts.release_tree import check_members
from watcher.parts.releases import Layout


class Repo:
    """A work tree pushing to a bare remote, and a GitSource exporting from its mirror."""

    def __init__(self, base: Path) -> None:
        self.base, self.work, remote = base, base / "work", base / "remote.git"
        git("init", "--bare", "-q", "-b", "main", str(remote), cwd=base)
        self.work.mkdir()
        git("init", "-q", "-b", "main", cwd=self.work)
        git("remote", "add", "origin", str(remote), cwd=self.work)
        self.layout = Layout(base / "app")
        self.layout.prepare()
        self.source = GitSource(GitConfig(remote=str(remote), timeout=30), self.layout.repo)

    def commit(self, files: dict[str, str], links: dict[str, str]) -> str:
        """Commit regular files and symlinks (name -> target); push; the new sha."""
        for rel, text in files.items():
            (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.work / rel).write_text(text)
        for rel, target in links.items():
            (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, self.work / rel)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", "a commit", cwd=self.work)
        git("push", "-q", "origin", "main", cwd=self.work)
        self.source.fetch()
        return git("rev-parse", "HEAD", cwd=self.work)

    def export(self, sha: str) -> Path:
        release = self.layout.release(releases.release_name(sha))
        self.source.export(sha, release)
        return release


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the app root holding a file nobody may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "precious").write_text("keep me\n")
    return path


def untouched(outside: Path) -> bool:
    return sorted(p.name for p in outside.iterdir()) == ["precious"] and \
        (outside / "precious").read_text() == "keep me\n"


@pytest.mark.parametrize("link", ["absolute", "climbing"])
def test_a_symlink_pointing_outside_fails_the_export(repo: Repo, outside: Path,
                                                     link: str) -> None:
    """A committed symlink to outside the release (absolute, or `../..`) fails the export
    step with the link named; nothing outside is written (tarfile's `data` filter)."""
    target = str(outside) if link == "absolute" else "../../../outside"
    sha = repo.commit({"manage.py": "print()\n"}, {"escape": target})
    with pytest.raises(StepFailed, match="escape") as failed:
        repo.export(sha)
    assert failed.value.step == "export"
    assert untouched(outside)


def test_revision_through_a_committed_symlink_is_refused(repo: Repo, outside: Path) -> None:
    """A committed `REVISION -> /outside/precious`: the outside file keeps its content."""
    sha = repo.commit({"manage.py": "print()\n"}, {"REVISION": str(outside / "precious")})
    with pytest.raises(StepFailed):
        repo.export(sha)
    assert untouched(outside)


def test_revision_is_written_without_following_links(repo: Repo, tmp_path: Path,
                                                     outside: Path) -> None:
    """A REVISION symlink (committed, pointing inside; or planted pointing outside) is
    replaced by a plain file holding the sha; what it pointed at is not written."""
    sha = repo.commit({"settings.py": "DEBUG = False\n"}, {"REVISION": "settings.py"})
    release = repo.export(sha)
    assert not (release / "REVISION").is_symlink()
    assert (release / "REVISION").read_text() == sha + "\n"
    assert (release / "settings.py").read_text() == "DEBUG = False\n"
    planted = tmp_path / "planted"
    planted.mkdir()
    os.symlink(outside / "precious", planted / "REVISION")
    fs.write_new(planted / "REVISION", sha.encode())
    assert (planted / "REVISION").read_bytes() == sha.encode()
    assert untouched(outside)


def test_links_inside_the_release_are_kept(repo: Repo) -> None:
    """Symlinks that stay inside the release are extracted as they are."""
    sha = repo.commit({"static/app.css": "a{}\n"}, {"css": "static/app.css",
                                                    "static/up": "../static"})
    release = repo.export(sha)
    assert os.readlink(release / "css") == "static/app.css"
    assert (release / "static" / "up" / "app.css").read_text() == "a{}\n"


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("members", [
    [member("/etc/passwd")],
    [member("../x")],
    [member("a/../../x")],
    [member("l", tarfile.SYMTYPE, "/etc")],
    [member("l", tarfile.SYMTYPE, "../..")],
    [member("d/l", tarfile.SYMTYPE, "../../x")],
    [member("h", tarfile.LNKTYPE, "../x")],
    [member("l", tarfile.SYMTYPE, "d"), member("l/x")],
    [member("dev", tarfile.CHRTYPE)],
])
def test_explicit_checks_refuse_what_the_data_filter_refuses(
        members: list[tarfile.TarInfo]) -> None:
    """On a Python without extraction filters, the hand checks refuse absolute names, `..`,
    links out of the release, paths through links, and device files."""
    with pytest.raises(ValueError):
        check_members(members)


def test_explicit_checks_are_what_export_uses_without_the_data_filter(
        repo: Repo, outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `tarfile.data_filter` gone (an older Python), a link out still fails the export,
    and an ordinary tree with inner links still exports."""
    check_members([member("a"), member("d", tarfile.DIRTYPE), member("d/f"),
                   member("d/l", tarfile.SYMTYPE, "../a"), member("h", tarfile.LNKTYPE, "a")])
    monkeypatch.delattr(tarfile, "data_filter")
    ok = repo.commit({"a.txt": "a\n"}, {"b.txt": "a.txt"})
    assert (repo.export(ok) / "b.txt").read_text() == "a\n"
    bad = repo.commit({}, {"escape": str(outside)})
    with pytest.raises(StepFailed, match="escape"):
        repo.export(bad)
    assert untouched(outside)


# -- link_shared ----------------------------------------------------------------------------
def release_with(layout: Layout, links: dict[str, str]) -> Path:
    release = layout.release("r1")
    release.mkdir(parents=True)
    for rel, target in links.items():
        os.symlink(target, release / rel)
    return release


def test_link_shared_never_follows_a_symlinked_parent_into_shared(tmp_path: Path) -> None:
    """`build.shared = ["var/media"]` with a committed `var -> ../../shared/var`: the step
    fails naming `var`, and the uploads in shared/var/media stay."""
    layout = Layout(tmp_path / "app")
    layout.prepare()
    uploads = layout.shared / "var" / "media"
    uploads.mkdir(parents=True)
    (uploads / "photo.jpg").write_text("jpeg")
    release = release_with(layout, {"var": "../../shared/var"})
    with pytest.raises(StepFailed, match=r"'var'.*symlink") as failed:
        releases.link_shared(layout, release, ["var/media"])
    assert failed.value.step == "shared"
    assert (uploads / "photo.jpg").read_text() == "jpeg"


def test_link_shared_never_copies_or_deletes_an_outside_directory(tmp_path: Path,
                                                                  outside: Path) -> None:
    """A committed `var -> /somewhere/outside` is neither copied into shared/ nor deleted."""
    layout = Layout(tmp_path / "app")
    layout.prepare()
    (outside / "media").mkdir()
    (outside / "media" / "f").write_text("x")
    release = release_with(layout, {"var": str(outside)})
    with pytest.raises(StepFailed, match="'var'"):
        releases.link_shared(layout, release, ["var/media"])
    assert (outside / "media" / "f").read_text() == "x"
    assert not (layout.shared / "var").exists()


def test_a_committed_symlink_at_the_shared_path_is_replaced(tmp_path: Path,
                                                            outside: Path) -> None:
    """A committed `media -> /outside` is replaced by the link into shared/; nothing is
    seeded from where it pointed, and the outside stays as it was."""
    layout = Layout(tmp_path / "app")
    layout.prepare()
    release = release_with(layout, {"media": str(outside)})
    releases.link_shared(layout, release, ["media"])
    assert os.readlink(release / "media") == str(layout.shared / "media")
    assert list((layout.shared / "media").iterdir()) == []
    assert untouched(outside)


def test_a_symlinked_parent_commit_fails_the_deploy_and_touches_nothing(
        bench: Bench, tmp_path: Path) -> None:
    """End to end: `var -> ../../shared/var` with `build.shared = ["var/media"]`: the deploy
    fails (exit 1) and is marked bad, the live release stays, the uploads stay."""
    site = bench.site
    uploads = site.root / "shared" / "var" / "media"
    uploads.mkdir(parents=True)
    (uploads / "photo.jpg").write_text("jpeg")
    bench.configure({"build": {"shared": '["data", "var/media"]'}})
    live = site.live_release()
    os.symlink("../../shared/var", site.work / "var")
    bench.undo.callback(lambda: (site.work / "var").unlink(missing_ok=True))
    sha = bench.commit_fault({}, "Link var to the shared directory")
    result = site.watcher("--once")
    assert result.returncode == 1, result.stderr[-2000:]
    assert (uploads / "photo.jpg").read_text() == "jpeg"
    assert site.live_release() == live
    assert sha in site.state()["bad"]


# -- modes (item 11) ------------------------------------------------------------------------
def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_repo_is_private_and_releases_stay_readable(repo: Repo, tmp_path: Path) -> None:
    """repo/ (the private history) is 0700, also when git creates the mirror and when an
    older install left it 0755; releases/, venvs/, shared/ and a release's files stay
    readable by others (Nginx serves static files from them)."""
    layout = repo.layout
    assert mode(layout.repo) == 0o700
    assert {mode(d) for d in (layout.releases, layout.venvs, layout.shared)} == {0o755}
    sha = repo.commit({"static/site.css": "a{}\n"}, {})
    assert mode(layout.repo) == 0o700
    release = repo.export(sha)
    assert mode(release / "static" / "site.css") & 0o004
    assert mode(release / "static") & 0o005 == 0o005
    layout.repo.chmod(0o755)  # as created before this fix
    layout.prepare()
    assert mode(layout.repo) == 0o700
    fresh = Layout(tmp_path / "fresh")
    GitSource(repo.source.cfg, fresh.repo).fetch()
    assert mode(fresh.repo) == 0o700
