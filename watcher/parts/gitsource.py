"""Git: remote head by ls-remote, the bare mirror, exports, changed paths and commit lists.

All git commands go through the runner with a timeout and a prompt-free environment, the
report's commit list too (one `git log`: no library to import, no helper process left over).
"""

from __future__ import annotations

import base64
import re
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import structlog

from watcher.config import GitConfig, read_secret
from watcher.errors import GitError, RemoteUnreachable, StepFailed
from watcher.gates import peeled_tags, pick_tag
from watcher.kinds import Commit
from watcher.log import register_secret, scrub
from watcher.parts import fs, release_spare, release_tree
from watcher.parts.runner import clean_env, run

log = structlog.get_logger()
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
TRACKING = "refs/watcher/"


class GitSource:
    def __init__(self, cfg: GitConfig, mirror: Path) -> None:
        self.cfg = cfg
        self.mirror = mirror

    # -- environment -------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """No prompts ever; the deploy key and known_hosts for ssh; the token as a header."""
        env = clean_env({"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never"})
        env.pop("GIT_ASKPASS", None)
        env.pop("SSH_ASKPASS", None)
        ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        if self.cfg.ssh_key_file:
            ssh += ["-i", self.cfg.ssh_key_file, "-o", "IdentitiesOnly=yes"]
        if self.cfg.known_hosts_file:
            ssh += [
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.cfg.known_hosts_file}",
            ]
        env["GIT_SSH_COMMAND"] = " ".join(_quote(a) for a in ssh)
        token = read_secret(self.cfg.token_file, "git.token_file")
        if token:
            # Passed through GIT_CONFIG_* variables, not argv: other users cannot read
            # another process's environment, but they can read its command line.
            register_secret(token)
            basic = base64.b64encode(f"{self.cfg.token_username}:{token}".encode()).decode()
            register_secret(basic)
            env["GIT_CONFIG_COUNT"] = "1"
            env["GIT_CONFIG_KEY_0"] = "http.extraHeader"
            env["GIT_CONFIG_VALUE_0"] = f"Authorization: Basic {basic}"
        return env

    def _git(self, *args: str, step: str, timeout: float | None = None,
             check: bool = True, stdout_path: Path | None = None) -> str:
        result = run(
            ["git", *args], step=step, timeout=timeout or self.cfg.timeout,
            env=self.env(), check=check, stdout_path=stdout_path,
        )
        return result.output

    def _reason(self, exc: StepFailed) -> str:
        """Why git failed, with the deploy key's path replaced by its setting's name (ssh
        quotes it in "Load key ...: bad permissions")."""
        text = _reason(exc.output_tail)
        key = self.cfg.ssh_key_file
        return text.replace(key, "<git.ssh_key_file>") if key else text

    # -- remote ------------------------------------------------------------------------
    def remote_head(self) -> str:
        """The branch's sha on the remote, by ls-remote: no objects are fetched."""
        ref = f"refs/heads/{self.cfg.branch}"
        try:
            out = self._git("ls-remote", "--", self.cfg.remote, ref, step="resolve")
        except StepFailed as exc:
            raise RemoteUnreachable(
                f"git ls-remote {scrub(self.cfg.remote)} failed: {exc.message}: "
                f"{self._reason(exc)}"
            ) from None
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            if name.strip() == ref and SHA_RE.match(sha):
                return sha
        raise GitError(f"branch {self.cfg.branch!r} not found on the remote")

    def remote_target(self) -> tuple[str, str | None]:
        """What the next check deploys: (sha, None) for the branch head, or with
        `git.tag_pattern` (commit sha, tag) of the highest matching semver tag. By ls-remote
        only, so a check with nothing new fetches nothing."""
        if not self.cfg.tag_pattern:
            return self.remote_head(), None
        best = pick_tag(peeled_tags(self.remote_tags()), self.cfg.tag_pattern,
                        self.cfg.prereleases)
        if best is None:
            pre = "" if self.cfg.prereleases else " (pre-releases excluded)"
            raise GitError(f"no tag on the remote matches git.tag_pattern "
                           f"{self.cfg.tag_pattern!r} as a version{pre}")
        return best.sha, best.name

    def has_tag(self, name: str) -> bool:
        res = run(["git", "-C", str(self.mirror), "rev-parse", "--verify", "--quiet",
                   f"refs/tags/{name}"], step="fetch", timeout=self.cfg.timeout,
                  env=self.env(), check=False)
        return res.ok

    def remote_tags(self) -> str:
        """`git ls-remote --tags` of the remote (names, shas and peeled `^{}` lines): what
        `gates.pick_tag` chooses from. No objects are fetched."""
        try:
            return self._git("ls-remote", "--tags", "--", self.cfg.remote, step="resolve")
        except StepFailed as exc:
            raise RemoteUnreachable(
                f"git ls-remote --tags {scrub(self.cfg.remote)} failed: {exc.message}: "
                f"{self._reason(exc)}"
            ) from None

    def fetch(self, *, tags: bool = False) -> None:
        """Fetch the branch (and tags when asked) into the bare mirror, creating it first."""
        if not (self.mirror / "HEAD").exists():
            self.mirror.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.mirror.chmod(0o700)  # the private history: the deploy user's alone
            self._git("init", "--bare", "--quiet", str(self.mirror), step="fetch")
        refspecs = [f"+refs/heads/{self.cfg.branch}:{TRACKING}{self.cfg.branch}"]
        if tags:
            refspecs.append("+refs/tags/*:refs/tags/*")
        try:
            self._git("-C", str(self.mirror), "fetch", "--quiet", "--no-tags", "--prune",
                      "--", self.cfg.remote, *refspecs, step="fetch")
        except StepFailed as exc:
            raise RemoteUnreachable(
                f"git fetch from {scrub(self.cfg.remote)} failed: {exc.message}: "
                f"{self._reason(exc)}"
            ) from None

    def resolve(self, rev: str) -> str:
        """A branch, tag or sha -> full sha, looked up in the mirror after a fetch."""
        self.fetch(tags=True)
        for candidate in (f"{TRACKING}{rev}", f"refs/tags/{rev}", rev):
            out = run(
                ["git", "-C", str(self.mirror), "rev-parse", "--verify", "--quiet",
                 f"{candidate}^{{commit}}"],
                step="resolve", timeout=self.cfg.timeout, env=self.env(), check=False,
            )
            if out.ok and SHA_RE.match(out.output.strip()):
                return out.output.strip()
        raise GitError(f"no commit named {rev!r} on branch {self.cfg.branch} or in tags")

    # -- mirror ------------------------------------------------------------------------
    def tracking_head(self) -> str | None:
        """The branch head as last fetched into the mirror (no network)."""
        res = run(["git", "-C", str(self.mirror), "rev-parse", "--verify", "--quiet",
                   f"{TRACKING}{self.cfg.branch}"], step="resolve", timeout=self.cfg.timeout,
                  env=self.env(), check=False)
        sha = res.output.strip()
        return sha if res.ok and SHA_RE.match(sha) else None

    def has(self, sha: str) -> bool:
        if not (self.mirror / "HEAD").exists():
            return False
        res = run(["git", "-C", str(self.mirror), "cat-file", "-e", f"{sha}^{{commit}}"],
                  step="fetch", timeout=self.cfg.timeout, env=self.env(), check=False)
        return res.ok

    def export(self, sha: str, dest: Path, base: tuple[Path, str] | None = None) -> str:
        """Write the tree of `sha` into `dest` (no .git inside) and a REVISION file.

        Extraction uses tarfile's `data` filter (explicit checks on a Python without it): a
        committed symlink that points outside the release, absolute or climbing out with
        `..`, fails this step, and nothing is written outside `dest`. REVISION is written
        without following a link the commit may have put under that name.

        With `base` (the live release's dir and sha), files that did not change since the
        live commit are hard-linked from it and only the changed paths are written (see
        parts/release_tree.py); a missing or damaged live release falls back to a full
        export. Returns how the release was built: "linked" or "full".
        """
        how = "full"
        if base is not None:
            how = self._export_linked(sha, dest, *base)
        if how == "full":
            dest.mkdir(parents=True)
            self._extract(sha, dest)
        # A fresh file: never one linked from the live release (release_tree.link_unchanged
        # leaves it, when committed, to the archive), so this write cannot reach another
        # release.
        fs.write_new(dest / "REVISION", (sha + "\n").encode("ascii"))
        return how

    def _extract(self, sha: str, dest: Path, paths: Sequence[str] = ()) -> None:
        """`git archive` of `sha` (only `paths` when given) unpacked into `dest`."""
        with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=".export-", suffix=".tar") as tmp:
            self._git("--literal-pathspecs", "-C", str(self.mirror), "archive", "--format=tar",
                      sha, *(["--", *paths] if paths else []),
                      step="export", stdout_path=Path(tmp.name))
            try:
                with tarfile.open(tmp.name) as tar:
                    release_tree.extract(tar, dest)
            except (tarfile.TarError, ValueError) as exc:
                raise StepFailed("export", f"commit {sha[:12]} cannot be exported: {exc}") from None

    def _read(self, *args: str, scratch: Path) -> str:
        """The whole stdout of a git command in the mirror (the runner keeps only a tail)."""
        with tempfile.NamedTemporaryFile(dir=scratch, prefix=".git-out-") as tmp:
            self._git("-C", str(self.mirror), *args, step="export", stdout_path=Path(tmp.name))
            return Path(tmp.name).read_text(encoding="utf-8", errors="surrogateescape")

    def _export_linked(self, sha: str, dest: Path, live: Path, live_sha: str) -> str:
        """Build `dest` from the live release plus the diff; "full" when it cannot."""
        why = release_tree.unusable(live, live_sha) or (
            "" if self.has(live_sha) else "live commit not in the mirror")
        if why:
            log.info("export.full", reason=why)
            return "full"
        changed = frozenset(p for p in self._read(
            "diff", "--name-only", "--no-renames", "-z", live_sha, sha,
            scratch=dest.parent).split("\0") if p)
        facts = release_spare.peek(dest.parent, live.name, live_sha)
        if facts is not None and not any(release_tree.is_attributes(p) for p in changed):
            done = self._from_spare(sha, dest, live, live_sha, changed, facts)
            if done:
                return done
        tree = release_tree.parse_tree(self._read("ls-tree", "-r", "-l", "-z", "--full-tree",
                                                  sha, scratch=dest.parent))
        attrs = {path: self._read("cat-file", "blob", f"{sha}:{path}", scratch=dest.parent)
                 for path in tree if release_tree.is_attributes(path)}
        why = release_tree.needs_full(tree, changed, attrs)
        if why:
            log.info("export.full", reason=why)
            return "full"
        dest.mkdir(parents=True)
        try:
            write, made = release_tree.link_unchanged(tree, changed, live, dest)
            release_tree.copy_dir_modes(live, dest, made)
            for chunk in release_tree.chunks(write):
                self._extract(sha, dest, chunk)
        except (OSError, tarfile.TarError, StepFailed) as exc:
            # e.g. an export-ignored path git archive will not name: a full export decides.
            shutil.rmtree(dest, ignore_errors=True)
            log.warning("export.full", reason=f"linking failed: {exc}")
            return "full"
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        log.info("export.linked", linked=len(tree) - len(write), written=len(write))
        return "linked"

    def _from_spare(self, sha: str, dest: Path, live: Path, live_sha: str,
                    changed: frozenset[str], facts: release_spare.Facts) -> str:
        """Build `dest` from the spare linked ahead of time from the live release
        (parts/release_spare.py): the diff's paths removed, then written with the ones the
        spare did not link. With no `.gitattributes` in the diff the new tree is the live
        one (whose facts the spare's builder kept) with the changed paths replaced, so only
        those are listed. "linked", "full", or "" (no spare after all, or it failed: dest
        removed, the caller lists the tree and links from the live release)."""
        listed: dict[str, tuple[str, str, int]] = {}
        for chunk in release_tree.chunks(sorted(changed)):
            listed.update(release_tree.parse_tree(self._read(
                "--literal-pathspecs", "ls-tree", "-r", "-l", "-z", "--full-tree", sha, "--",
                *chunk, scratch=dest.parent)))
        # needs_full's questions, answered from the live tree's facts and the listed paths
        why = facts.full or (
            "submodules" if any(kind != "blob" for _m, kind, _s in listed.values()) else
            "most files changed" if len(changed) * 2 > facts.files else "")
        if why:
            log.info("export.full", reason=why)
            return "full"
        unlinked = release_spare.take(dest.parent, live.name, live_sha, dest)
        if unlinked is None:
            return ""
        write = sorted(set(listed) | (unlinked - changed))
        try:
            release_spare.strip(dest, changed)
            for chunk in release_tree.chunks(write):
                self._extract(sha, dest, chunk)
        except (OSError, tarfile.TarError, StepFailed) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            log.warning("export.spare_failed", error=str(exc))
            return ""
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        log.info("export.linked", linked=facts.files - len(write), written=len(write),
                 spare=True, listed=len(listed))
        return "linked"

    def spare_later(self, releases: Path, live_name: str, live_sha: str) -> None:
        """After a deploy: link the new live release into the next one's base, in a detached
        process, off the deploy's wall time (parts/release_spare.py)."""
        release_spare.build_later(self.mirror, releases, live_name, live_sha, clean_env())

    def changed_paths(self, old: str, new: str) -> frozenset[str] | None:
        """Paths changed between two commits; None when the old one is unknown here."""
        if not self.has(old):
            return None
        out = run(["git", "-C", str(self.mirror), "diff", "--name-only", "--no-renames",
                   old, new], step="plan", timeout=self.cfg.timeout, env=self.env())
        return frozenset(line for line in out.output.splitlines() if line)

    def commits(self, old: str | None, new: str, limit: int = 50) -> list[Commit]:
        """The commits that `new` brings over `old`, newest first, for the report (one
        `git log`; any failure loses the list, no more)."""
        rev = f"{old}..{new}" if old and self.has(old) else new
        res = run(["git", "-C", str(self.mirror), "log", "-z", f"--max-count={limit}",
                   "--format=%H%x1f%an%x1f%s", rev, "--"], step="plan",
                  timeout=self.cfg.timeout, env=self.env(), check=False)
        if not res.ok:
            log.warning("git.commits_unreadable", error=res.output[-200:])
            return []
        found: list[Commit] = []
        for record in res.output.split("\0"):
            fields = record.strip("\n").split("\x1f")
            if len(fields) == 3 and len(fields[0]) >= 40:
                found.append(Commit(sha=fields[0], author=fields[1], subject=fields[2]))
        return found


# git's trailer after any transport failure: true, and useless as the reason.
_BOILERPLATE = ("fatal: could not read from remote repository.",
                "please make sure you have the correct access rights",
                "and the repository exists.")


def _reason(text: str) -> str:
    """The telling end of git's output: its last two lines that are not the generic trailer
    ("Host key for [h]:22 has changed ... Host key verification failed.")."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    telling = [line for line in lines if line.lower() not in _BOILERPLATE]
    return " ".join((telling or lines)[-2:]) or "no output"


def _quote(arg: str) -> str:
    if re.match(r"^[A-Za-z0-9_./=:@-]+$", arg):
        return arg
    return "'" + arg.replace("'", "'\"'\"'") + "'"

