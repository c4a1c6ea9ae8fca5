"""How a commit's files land in a release directory without reaching outside it.

`extract` unpacks `git archive` output through tarfile's `data` filter (`check_members`, the
same checks by hand, where Python lacks it). The rest builds a release linked from the live
one (issue 12): `gitsource.GitSource.export` asks git for the tree and the diff, and these
pure file-tree steps decide whether linking is exact and hard-link the unchanged files.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path


def extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract with the `data` filter, or after `check_members` where Python lacks it."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    members = tar.getmembers()  # pragma: no cover - Python without extraction filters
    check_members(members)  # pragma: no cover
    tar.extractall(dest, members)  # noqa: S202 - checked just above  # pragma: no cover


def check_members(members: list[tarfile.TarInfo]) -> None:
    """What the `data` filter refuses, checked by hand: absolute names or `..`, a path
    through an earlier symlink, a link pointing outside, anything but files, dirs, links."""
    links: set[str] = set()
    for m in members:
        name = posixpath.normpath(m.name)
        if posixpath.isabs(m.name) or name == ".." or name.startswith("../"):
            raise ValueError(f"{m.name!r} is outside the release")
        parts = name.split("/")
        if any("/".join(parts[:i]) in links for i in range(1, len(parts))):
            raise ValueError(f"{m.name!r} goes through a symlink")
        if m.issym() or m.islnk():
            base = posixpath.dirname(name) if m.issym() else ""
            target = posixpath.normpath(posixpath.join(base, m.linkname))
            if posixpath.isabs(m.linkname) or target == ".." or target.startswith("../"):
                raise ValueError(f"{m.name!r} would link to {m.linkname!r}, which is outside "
                                 "the release")
            links.add(name)
        elif not (m.isfile() or m.isdir()):
            raise ValueError(f"{m.name!r} is not a file, directory or link")


# -- releases linked from the live one (issue 12) ------------------------------------------
# Like `rsync --link-dest`: a path whose blob and mode did not change since the live commit
# is hard-linked from the live release, everything else comes from `git archive` of just
# those paths, through the same extraction as a full export. Why no release can change
# another's files: a linked inode is only ever replaced in a release (unlink or rename over
# it: REVISION, `.venv`, shared links, collectstatic), never opened for writing by watcher,
# and the app must not write into its release (docs/releases.md). Symlinks are never
# linked: they come from the archive, so extraction checks them as in a full export.
_ARCHIVE_CHUNK = 500  # paths per `git archive` call (argv stays far below ARG_MAX)


def parse_tree(out: str) -> dict[str, tuple[str, str, int]]:
    """`git ls-tree -r -l -z` -> {path: (mode, type, size)} (size -1 for non-blobs)."""
    tree: dict[str, tuple[str, str, int]] = {}
    for rec in out.split("\0"):
        if not rec:
            continue
        meta, _, path = rec.partition("\t")
        mode, kind, _obj, size = meta.split()
        tree[path] = (mode, kind, int(size) if size.isdigit() else -1)
    return tree


def unusable(live: Path, live_sha: str) -> str:
    """Why the live release cannot be a base ("" when it can)."""
    try:
        rev = live / "REVISION"
        if not stat.S_ISREG(rev.lstat().st_mode) or not live.is_dir() or live.is_symlink():
            return "live release damaged"
        if rev.read_text(encoding="ascii", errors="replace").strip() != live_sha:
            return "live release's REVISION is not its recorded commit"
    except OSError:
        return "live release missing"
    return ""


def is_attributes(path: str) -> bool:
    return path == ".gitattributes" or path.endswith("/.gitattributes")


def needs_full(tree: dict[str, tuple[str, str, int]], changed: frozenset[str],
                attrs: dict[str, str]) -> str:
    """Why this diff must be exported in full ("" when linking is exact)."""
    if any(kind != "blob" for _mode, kind, _size in tree.values()):
        return "submodules"  # git archive writes them as empty dirs; rare enough
    if any(is_attributes(p) for p in changed):
        return ".gitattributes changed: unchanged blobs may export differently"
    if any("export-subst" in text for text in attrs.values()):
        return "export-subst: file contents depend on the commit"
    if len(changed) * 2 > len(tree):
        return "most files changed"
    return ""


def link_unchanged(tree: dict[str, tuple[str, str, int]], changed: frozenset[str],
                    live: Path, dest: Path) -> tuple[list[str], set[Path]]:
    """Hard-link each unchanged regular file from `live` into `dest`; the paths left to
    write from the archive: changed ones, symlinks, REVISION, and any live file that does
    not look as git says it should (missing, another type, size or executable bit)."""
    write: list[str] = []
    made: set[Path] = set()
    real_dirs: dict[Path, bool] = {}
    for path, (mode, _kind, size) in tree.items():
        if path in changed or mode not in ("100644", "100755") or path == "REVISION":
            write.append(path)
            continue
        src, dst = live / path, dest / path
        try:
            st = src.lstat()
            if (not stat.S_ISREG(st.st_mode) or st.st_size != size
                    or bool(st.st_mode & stat.S_IXUSR) != (mode == "100755")
                    or not _real_dirs(live, Path(path).parent, real_dirs)):
                write.append(path)
                continue
            if dst.parent not in made:
                dst.parent.mkdir(parents=True, exist_ok=True)
                made.add(dst.parent)
            os.link(src, dst, follow_symlinks=False)
        except OSError:  # EMLINK, a vanished file: write it instead
            write.append(path)
    return write, made


def _real_dirs(live: Path, rel: Path, seen: dict[Path, bool]) -> bool:
    """Every directory on the way to `rel` in the live release is a real directory, not a
    symlink put there after its export: files are never linked through one."""
    if rel == Path("."):
        return True
    if rel not in seen:
        try:
            is_dir = stat.S_ISDIR((live / rel).lstat().st_mode)
        except OSError:
            is_dir = False
        seen[rel] = is_dir and _real_dirs(live, rel.parent, seen)
    return seen[rel]


def chunks(paths: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(paths), _ARCHIVE_CHUNK):
        yield paths[i:i + _ARCHIVE_CHUNK]


def copy_dir_modes(live: Path, dest: Path, made: set[Path]) -> None:
    """Directories made while linking (all real directories in the live release) get the
    modes the live export gave them; the archive then sets those it contains the same way,
    so the tree matches a full export's."""
    done: set[Path] = {dest}
    for d in made:
        while d not in done:
            done.add(d)
            os.chmod(d, stat.S_IMODE((live / d.relative_to(dest)).lstat().st_mode))
            d = d.parent
