"""How a commit's files land in a release directory without reaching outside it.

`extract` unpacks `git archive` output through tarfile's `data` filter (`check_members`, the
same checks by hand, where Python lacks it). The rest builds a release linked from the live
one (issue 12): `gitsource.GitSource.export` asks git for the tree and the diff, and these
pure file-tree steps decide whether linking is exact and hard-link the unchanged files.
"""

from __future__ import annotations

import contextlib
import errno
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
# linked: they come from the archive, so extraction checks them as in a full export. Nor is
# anything linked through one: each live directory is opened from the live root one component
# at a time with O_NOFOLLOW, so a symlink put in the live release after its export (say
# `deep -> /etc`) is refused, not followed, and the files under it come from the archive. The
# links and lstats then name one component relative to those directory descriptors.
_ARCHIVE_CHUNK = 500  # paths per `git archive` call (argv stays far below ARG_MAX)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_NAMES = ("", ".", "..")  # path components never linked through or as


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
                   live: Path, dest: Path) -> tuple[list[str], list[str]]:
    """Hard-link each unchanged regular file from `live` into `dest`; the paths left to
    write from the archive: changed ones, symlinks, REVISION, and any live file that does
    not look as git says it should (missing, another type, size or executable bit, under a
    directory that is missing or is a symlink), and the directories made in `dest` (relative,
    parents first) for `copy_dir_modes`. OSError when `live` or `dest` cannot be opened."""
    write: list[str] = []
    by_dir: dict[str, list[tuple[str, bool, int]]] = {}
    for path, (mode, _kind, size) in tree.items():
        if path in changed or mode not in ("100644", "100755") or path == "REVISION":
            write.append(path)
            continue
        parent, _, name = path.rpartition("/")
        by_dir.setdefault(parent, []).append((name, mode == "100755", size))
    made: list[str] = []
    with _roots(live, dest) as (live_fd, dest_fd):
        for parent, files in by_dir.items():
            write += _link_dir(live_fd, dest_fd, parent, files, made)
    return write, made


def _link_dir(live_fd: int, dest_fd: int, parent: str, files: list[tuple[str, bool, int]],
              made: list[str]) -> list[str]:
    """Link `files` (name, executable, size) of one directory; returns the paths not linked."""
    prefix = parent + "/" if parent else ""
    parts = parent.split("/") if parent else []
    try:
        src = _open_dir(live_fd, parts)
    except OSError:  # missing, not a directory, or a symlink: never linked through
        return [prefix + name for name, _x, _size in files]
    write: list[str] = []
    with contextlib.ExitStack() as fds:
        fds.callback(os.close, src)
        dst = -1  # opened (made) at the first link: a directory with none is the archive's
        for name, executable, size in files:
            try:
                st = os.lstat(name, dir_fd=src)
                if (name in _NOT_NAMES or not stat.S_ISREG(st.st_mode) or st.st_size != size
                        or bool(st.st_mode & stat.S_IXUSR) != executable):
                    write.append(prefix + name)
                    continue
                if dst < 0:
                    dst = _open_dir(dest_fd, parts, made)
                    fds.callback(os.close, dst)
                os.link(name, name, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
            except OSError:  # EMLINK, a vanished file: write it instead
                write.append(prefix + name)
    return write


def _open_dir(root: int, parts: list[str], made: list[str] | None = None) -> int:
    """The directory `parts` below the open directory `root`, opened one component at a
    time with O_NOFOLLOW, so a symlink anywhere on the way is refused (ELOOP, ENOTDIR)
    rather than followed; `..` and the like are refused too (a hostile tree's, which the
    archive's extraction then rejects). With `made`, missing ones are created and listed."""
    if any(name in _NOT_NAMES for name in parts):
        raise OSError(errno.EINVAL, f"{'/'.join(parts)!r} is not a plain relative path")
    fd = os.dup(root)
    for i, name in enumerate(parts):
        try:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if made is None:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=fd)
                    made.append("/".join(parts[:i + 1]))
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def chunks(paths: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(paths), _ARCHIVE_CHUNK):
        yield paths[i:i + _ARCHIVE_CHUNK]


def copy_dir_modes(live: Path, dest: Path, made: list[str]) -> None:
    """Directories made while linking (all real directories in the live release) get the
    modes the live export gave them; the archive then sets those it contains the same way,
    so the tree matches a full export's. Children first: a parent's mode cannot stop it."""
    with _roots(live, dest) as (live_fd, dest_fd):
        for rel in reversed(made):
            parts = rel.split("/")
            with contextlib.ExitStack() as fds:
                src = _open_dir(live_fd, parts)
                fds.callback(os.close, src)
                dst = _open_dir(dest_fd, parts)
                fds.callback(os.close, dst)
                os.fchmod(dst, stat.S_IMODE(os.fstat(src).st_mode))


@contextlib.contextmanager
def _roots(live: Path, dest: Path) -> Iterator[tuple[int, int]]:
    """Both release directories, open (O_NOFOLLOW: neither may be a symlink)."""
    with contextlib.ExitStack() as fds:
        live_fd = os.open(live, _DIR_FLAGS)
        fds.callback(os.close, live_fd)
        dest_fd = os.open(dest, _DIR_FLAGS)
        fds.callback(os.close, dest_fd)
        yield live_fd, dest_fd
