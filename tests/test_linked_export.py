"""Releases built from the live one plus the diff (issue 12): the tree is the same, byte for
byte and mode for mode, as a full `git archive` export; unchanged files are hard links."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support.site import git

from watcher.config import GitConfig
from watcher.parts import release_spare, release_tree
from watcher.parts.gitsource import GitSource

FILES_A: dict[str, str] = {
    "a.txt": "alpha\n",
    "same.txt": "never changes\n",
    "dir/b.py": "print('b')\n",
    "dir/c.txt": "to be deleted\n",
    "gone/only.txt": "its whole dir goes\n",
    "rename-me.txt": "moving house\n",
    "mode.sh": "#!/bin/sh\necho mode\n",
    "exec.sh": "#!/bin/sh\necho stays executable\n",
    "deep/er/still/x.txt": "deep\n",
    "becomes-link.txt": "a file, then a symlink\n",
    "REVISION": "a committed REVISION file\n",
    "we ird [name]*.txt": "pathspec magic must not apply\n",
    "turns-dir": "a file, then a directory\n",
    "turns-file/inner.txt": "a directory, then a file\n",
    # Unchanged bulk, as in a real repository: most files do not change in a deploy.
    **{f"bulk/{i:02d}.py": f"N = {i}\n" for i in range(30)},
}


def tree(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every path under root: (type, permission bits, content or link target)."""
    out: dict[str, tuple[str, int, bytes]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p).encode())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


class Repo:
    def __init__(self, base: Path) -> None:
        self.remote = base / "remote.git"
        self.work = base / "work"
        git("init", "--bare", "-q", "-b", "main", str(self.remote), cwd=base)
        git("init", "-q", "-b", "main", str(self.work), cwd=base)
        git("remote", "add", "origin", str(self.remote), cwd=self.work)
        self.source = GitSource(GitConfig(remote=str(self.remote)), base / "mirror")
        self.releases = base / "releases"
        self.releases.mkdir()

    def commit(self, msg: str) -> str:
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", msg, cwd=self.work)
        git("push", "-q", "origin", "main", cwd=self.work)
        self.source.fetch()
        return git("rev-parse", "HEAD", cwd=self.work)

    def write(self, files: dict[str, str]) -> None:
        for rel, text in files.items():
            (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.work / rel).write_text(text)


@pytest.fixture()
def repo(tmp_path: Path) -> Repo:
    r = Repo(tmp_path)
    r.write(FILES_A)
    os.chmod(r.work / "exec.sh", 0o700)
    os.symlink("a.txt", r.work / "link")
    os.symlink("dir", r.work / "dirlink")
    return r


def change_everything(r: Repo) -> None:
    """Added, changed, deleted, renamed, mode-changed files and symlinks, a type change."""
    w = r.work
    r.write({"a.txt": "alpha, changed\n", "new/file.txt": "added\n",
             "deep/er/still/y.txt": "added beside an unchanged file\n"})
    (w / "dir" / "c.txt").unlink()
    (w / "gone" / "only.txt").unlink()
    os.rename(w / "rename-me.txt", w / "renamed.txt")
    os.chmod(w / "mode.sh", 0o700)
    (w / "link").unlink()
    os.symlink("same.txt", w / "link")  # retargeted
    os.symlink("new/file.txt", w / "newlink")  # added
    (w / "becomes-link.txt").unlink()
    os.symlink("a.txt", w / "becomes-link.txt")
    (w / "turns-dir").unlink()
    r.write({"turns-dir/inside.txt": "now a directory\n"})
    (w / "turns-file" / "inner.txt").unlink()
    (w / "turns-file").rmdir()
    r.write({"turns-file": "now a file\n"})


def spare_of(repo: Repo, live: Path, sha: str) -> Path:
    """What the detached builder does after a deploy: the live release's spare, built."""
    assert release_spare.build(repo.source.mirror, repo.releases, live.name, sha)
    spare, marker = release_spare.paths(repo.releases, live.name)
    assert spare.is_dir() and marker.is_file()
    return spare


@pytest.mark.parametrize("via_spare", [False, True], ids=["linked", "from-spare"])
def test_linked_release_equals_a_full_export(repo: Repo, via_spare: bool) -> None:
    """A release linked from the live one equals a full export of the same commit for added,
    changed, deleted, renamed and mode-changed files and symlinks, a file turned directory
    and back; unchanged files share the live release's inodes, changed ones do not, and the
    live release is left as it was. The same when built from the spare linked ahead of
    time, which it uses up."""
    sha_a = repo.commit("A")
    live = repo.releases / "a"
    assert repo.source.export(sha_a, live) == "full"
    spare = spare_of(repo, live, sha_a) if via_spare else None
    before = tree(live)
    change_everything(repo)
    sha_b = repo.commit("B")
    linked, full = repo.releases / "b-linked", repo.releases / "b-full"
    with capture_logs() as events:
        assert repo.source.export(sha_b, linked, base=(live, sha_a)) == "linked"
    [done] = [e for e in events if e["event"] == "export.linked"]
    # From the spare, only the diff's paths are listed from the new tree, not all of it.
    assert ("listed" in done) == via_spare
    repo.source.export(sha_b, full)
    assert tree(linked) == tree(full)
    assert tree(live) == before
    assert (linked / "REVISION").read_text() == sha_b + "\n"
    assert (live / "REVISION").read_text() == sha_a + "\n"
    for unchanged in ("same.txt", "exec.sh", "deep/er/still/x.txt", "dir/b.py"):
        assert (linked / unchanged).stat().st_ino == (live / unchanged).stat().st_ino
    for written in ("a.txt", "mode.sh", "REVISION", "turns-file"):
        assert (linked / written).stat().st_ino != (live / written).stat().st_ino
    assert (full / "same.txt").stat().st_nlink == 1
    if spare is not None:
        assert not spare.exists() and not release_spare.paths(repo.releases, "a")[1].exists()


def next_release_equals_full(repo: Repo, live: Path, sha_a: str, how: str = "linked") -> Path:
    """Commit a one-file change, export it with `live` as the base (built `how`) and in
    full; the two trees are asserted equal. Returns the one built from the base."""
    repo.write({"a.txt": "next\n"})
    sha_b = repo.commit("B")
    linked, full = repo.releases / "b-linked", repo.releases / "b-full"
    assert repo.source.export(sha_b, linked, base=(live, sha_a)) == how
    repo.source.export(sha_b, full)
    assert tree(linked) == tree(full)
    return linked


@pytest.mark.parametrize("via_spare", [False, True], ids=["linked", "from-spare"])
def test_damaged_file_in_the_live_release_is_written_not_linked(
        repo: Repo, via_spare: bool) -> None:
    """A live file that no longer looks as git says (size, executable bit, a symlinked
    parent dir) is written from git instead of linked, so the damage is not carried; also
    when the damage was there as the spare was linked."""
    sha_a = repo.commit("A")
    live = repo.releases / "a"
    repo.source.export(sha_a, live)
    (live / "same.txt").write_text("edited in place by someone\n")
    os.chmod(live / "exec.sh", 0o644)
    os.rename(live / "deep", live / "deep-moved")
    os.symlink("deep-moved", live / "deep")
    if via_spare:
        spare_of(repo, live, sha_a)
    linked = next_release_equals_full(repo, live, sha_a)
    assert (linked / "deep/er/still/x.txt").stat().st_nlink == 1


def test_no_file_is_linked_through_a_symlink_or_a_file_deep_in_the_live_release(
        repo: Repo, tmp_path: Path) -> None:
    """A live directory below the top (`deep/er`) replaced by a symlink to a look-alike
    outside the release, and one (`dir`) replaced by a regular file: their files are
    written from git, and the look-alike is not linked into the new release."""
    sha_a = repo.commit("A")
    live = repo.releases / "a"
    repo.source.export(sha_a, live)
    outside = tmp_path / "outside"
    (outside / "still").mkdir(parents=True)
    (outside / "still" / "x.txt").write_text("DEEP\n")  # the size git expects
    os.rename(live / "deep" / "er", tmp_path / "er-moved")
    os.symlink(outside, live / "deep" / "er")
    os.rename(live / "dir", tmp_path / "dir-moved")
    (live / "dir").write_text("a file where a directory was\n")
    linked = next_release_equals_full(repo, live, sha_a)
    assert (linked / "deep/er/still/x.txt").read_text() == "deep\n"
    assert (outside / "still" / "x.txt").stat().st_nlink == 1
    assert (linked / "dir/b.py").stat().st_nlink == 1
    assert (linked / "same.txt").stat().st_nlink == 2


def test_link_unchanged_refuses_dot_dot_and_closes_its_descriptors(tmp_path: Path) -> None:
    """A hostile tree naming `..` or `.` is never linked (the archive's extraction refuses
    it), nothing is made outside `dest`, and no directory descriptor is left open."""
    live, dest = tmp_path / "live", tmp_path / "dest"
    (live / "sub").mkdir(parents=True)
    dest.mkdir()
    (tmp_path / "secret.txt").write_text("secret\n")
    (live / "sub" / "ok.txt").write_text("ok\n")
    (live / "sub" / "bad.txt").write_text("bad\n")
    blob = ("100644", "blob")
    tree_ = {"../secret.txt": (*blob, 7), "sub/../../secret.txt": (*blob, 7),
             "./sub/ok.txt": (*blob, 3), "sub/ok.txt": (*blob, 3), "sub/bad.txt": (*blob, 99),
             "gone/x.txt": (*blob, 1)}
    fds = len(os.listdir("/proc/self/fd"))
    write, made = release_tree.link_unchanged(tree_, frozenset(), live, dest)
    release_tree.copy_dir_modes(live, dest, made)
    assert len(os.listdir("/proc/self/fd")) == fds
    assert sorted(write) == sorted(set(tree_) - {"sub/ok.txt"})
    assert made == ["sub"]
    assert os.listdir(dest) == ["sub"] and os.listdir(dest / "sub") == ["ok.txt"]
    assert (tmp_path / "secret.txt").stat().st_nlink == 1
    assert sorted(os.listdir(tmp_path)) == ["dest", "live", "secret.txt"]


@pytest.mark.parametrize("damage", ["missing", "wrong-revision", "revision-symlink"])
def test_missing_or_damaged_live_release_falls_back_to_a_full_export(
        repo: Repo, damage: str) -> None:
    """No live dir, a REVISION naming another commit, or a REVISION that is a symlink: the
    release is exported in full, and equals a full export."""
    sha_a = repo.commit("A")
    live = repo.releases / "a"
    repo.source.export(sha_a, live)
    if damage == "missing":
        os.rename(live, repo.releases / "elsewhere")
    elif damage == "wrong-revision":
        (live / "REVISION").write_text("f" * 40 + "\n")
    else:
        (live / "REVISION").unlink()
        (live / "rev").write_text(sha_a + "\n")
        os.symlink("rev", live / "REVISION")
    next_release_equals_full(repo, live, sha_a, how="full")


@pytest.mark.parametrize("via_spare", [False, True], ids=["linked", "from-spare"])
def test_gitattributes_change_exports_in_full(repo: Repo, via_spare: bool) -> None:
    """A change to .gitattributes can change how unchanged blobs export (export-ignore,
    eol, export-subst), so that deploy exports in full."""
    sha_a = repo.commit("A")
    live = repo.releases / "a"
    repo.source.export(sha_a, live)
    if via_spare:
        spare_of(repo, live, sha_a)
    repo.write({".gitattributes": "same.txt export-ignore\n"})
    sha_b = repo.commit("B")
    out, full = repo.releases / "b", repo.releases / "b-full"
    assert repo.source.export(sha_b, out, base=(live, sha_a)) == "full"
    repo.source.export(sha_b, full)
    assert tree(out) == tree(full) and not (out / "same.txt").exists()


@pytest.mark.parametrize("via_spare", [False, True], ids=["linked", "from-spare"])
def test_export_ignored_paths_stay_out_of_a_linked_release(repo: Repo, via_spare: bool) -> None:
    """With an unchanged .gitattributes that export-ignores a path, a linked release still
    equals a full export (the ignored path is in neither)."""
    repo.write({".gitattributes": "secret.txt export-ignore\n", "secret.txt": "not shipped\n"})
    sha_a = repo.commit("A")
    live = repo.releases / "a"
    repo.source.export(sha_a, live)
    if via_spare:
        spare_of(repo, live, sha_a)
    repo.write({"a.txt": "next\n", "secret.txt": "still not shipped\n"})
    sha_b = repo.commit("B")
    out, full = repo.releases / "b", repo.releases / "b-full"
    assert repo.source.export(sha_b, out, base=(live, sha_a)) == "linked"
    repo.source.export(sha_b, full)
    assert tree(out) == tree(full) and not (out / "secret.txt").exists()


def test_a_spare_of_an_export_subst_tree_exports_in_full(repo: Repo) -> None:
    """A spare remembers what its tree needs: with export-subst in an unchanged
    .gitattributes, a one-file change still exports in full (file contents depend on the
    commit), without listing the whole new tree."""
    repo.write({".gitattributes": "stamp.txt export-subst\n", "stamp.txt": "$Format:%H$\n"})
    sha_a = repo.commit("A")
    live = repo.releases / "a"
    repo.source.export(sha_a, live)
    spare_of(repo, live, sha_a)
    assert release_spare.peek(repo.releases, "a", sha_a) == release_spare.Facts(
        len(release_tree.parse_tree(git("ls-tree", "-r", "-l", "-z", sha_a, cwd=repo.work))),
        "export-subst: file contents depend on the commit")
    out = next_release_equals_full(repo, live, sha_a, how="full")
    sha_b = (out / "REVISION").read_text().strip()
    assert (out / "stamp.txt").read_text() == sha_b + "\n"


def test_a_spare_is_used_only_ready_and_for_its_own_live_release(repo: Repo) -> None:
    """A spare whose marker names another commit, one without its marker (a builder killed
    mid-way), and any spare while a builder holds the lock, are left alone: the export
    links from the live release as before and still equals a full export."""
    sha_a = repo.commit("A")
    live = repo.releases / "a"
    repo.source.export(sha_a, live)
    spare = spare_of(repo, live, sha_a)
    marker = release_spare.paths(repo.releases, "a")[1]
    repo.write({"a.txt": "next\n"})
    sha_b = repo.commit("B")
    full = repo.releases / "b-full"
    repo.source.export(sha_b, full)

    marker.write_text(marker.read_text().replace(sha_a, "f" * 40))
    assert repo.source.export(sha_b, repo.releases / "b1", base=(live, sha_a)) == "linked"
    assert tree(repo.releases / "b1") == tree(full) and spare.is_dir()

    marker.unlink()
    assert repo.source.export(sha_b, repo.releases / "b2", base=(live, sha_a)) == "linked"
    assert tree(repo.releases / "b2") == tree(full) and spare.is_dir()

    spare_of(repo, live, sha_a)  # a fresh, ready one
    with open(repo.releases / ".spare.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a builder at work
        assert repo.source.export(sha_b, repo.releases / "b3", base=(live, sha_a)) == "linked"
        assert not release_spare.build(repo.source.mirror, repo.releases, "a", sha_a)
    assert tree(repo.releases / "b3") == tree(full) and marker.is_file()
    assert repo.source.export(sha_b, repo.releases / "b4", base=(live, sha_a)) == "linked"
    assert not spare.exists() and tree(repo.releases / "b4") == tree(full)
