"""Signed commits and tags (`git.verify`): `git verify-commit` / `verify-tag` on the mirror.

- ssh: git's own `gpg.ssh.allowedSignersFile` format, read from `git.allowed_signers_file`
  at each check (a rotated file needs no restart).
- gpg: the armored public keys of `git.gpg_keys_file`, imported into a private keyring
  `.watcher/gnupg/` (never the user's `~/.gnupg`). The keyring is rebuilt whenever the file's
  content changes, so a key taken out of the file is no longer trusted. gpg runs with
  `no-autostart`: verifying needs no agent, and none is left running.

The verdict says which of the three refusals it is (unsigned, a key not in the list, a bad
signature) and who signed. Crash point: the keyring is built in a temp dir and renamed into
place, so a kill mid-import leaves the old keyring (or none, rebuilt at the next check).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from watcher.config import GitConfig
from watcher.errors import ConfigError, GitError, TransientError
from watcher.parts.runner import Result, clean_env, run

log = structlog.get_logger()
KEYRING = "gnupg"
_STAMP = ".keys-sha256"
_SSH_GOOD = re.compile(r'Good "git" signature for (?P<who>.+?) with (?P<key>.+)$', re.M)
_SSH_KEY = re.compile(r'Good "git" signature with (?P<key>.+)$', re.M)
_GPG = re.compile(r"^\[GNUPG:\] (?P<what>GOODSIG|BADSIG|EXPSIG|EXPKEYSIG|REVKEYSIG|ERRSIG|"
                  r"NO_PUBKEY) (?P<key>\S+)(?: (?P<who>.*))?$", re.M)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    kind: str  # good | unsigned | unknown_key | bad_signature
    signer: str  # who or which key signed ("" when unsigned)
    subject: str  # "commit 1234abcd" or "tag v1.2.0"

    @property
    def message(self) -> str:
        by = f" (signed by {self.signer})" if self.signer else ""
        return {
            "good": f"{self.subject}: good signature{by}",
            "unsigned": f"{self.subject} is not signed",
            "unknown_key": f"{self.subject} is signed by a key not allowed{by}",
            "bad_signature": f"{self.subject} carries a bad signature{by}",
        }[self.kind]

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "verdict": self.kind, "signer": self.signer,
                "subject": self.subject, "message": self.message}


class Verifier:
    def __init__(self, mode: str, mirror: Path, state_dir: Path, *, allowed_signers: str = "",
                 gpg_keys: str = "", timeout: float = 60.0) -> None:
        self.mode = mode  # off | ssh | gpg
        self.mirror = mirror
        self.keyring = state_dir / KEYRING
        self.allowed_signers = allowed_signers
        self.gpg_keys = gpg_keys
        self.timeout = timeout

    @classmethod
    def from_config(cls, cfg: GitConfig, mirror: Path, state_dir: Path) -> Verifier:
        return cls(cfg.verify, mirror, state_dir, allowed_signers=cfg.allowed_signers_file,
                   gpg_keys=cfg.gpg_keys_file, timeout=cfg.timeout)

    @property
    def enabled(self) -> bool:
        return self.mode in ("ssh", "gpg")

    def commit(self, sha: str) -> Verdict:
        return self._verify("commit", sha, f"commit {sha[:12]}")

    def tag(self, name: str) -> Verdict:
        return self._verify("tag", f"refs/tags/{name}", f"tag {name}")

    # -- git ---------------------------------------------------------------------------
    def _verify(self, kind: str, rev: str, subject: str) -> Verdict:
        env = clean_env({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
                         "LC_ALL": "C"})
        signature, armored = self._signature_of(kind, rev, env)
        if signature is None:
            return self._say(Verdict(False, "unsigned", "", subject))
        if signature != self.mode:  # e.g. a gpg signature where ssh keys are the list
            return self._say(Verdict(False, "unknown_key", f"a {signature} key", subject))
        # The other format's program is disabled: a signature never reaches the user's own
        # ~/.gnupg or an allowed-signers file from their git config.
        if self.mode == "ssh":
            settings = ["-c", f"gpg.ssh.allowedSignersFile={self._signers_file()}",
                        "-c", "gpg.program=false"]
        else:
            env["GNUPGHOME"] = str(self._ensure_keyring())
            settings = ["-c", f"gpg.ssh.allowedSignersFile={os.devnull}"]
        command = f"verify-{kind}"
        res = run(["git", *settings, "-C", str(self.mirror), command, "--raw", rev],
                  step="verify", timeout=self.timeout, env=env, check=False)
        if res.timed_out:  # not the commit's fault: the next check tries again
            raise TransientError(f"git {command} timed out after {self.timeout:g}s")
        verdict = (_ssh_verdict if self.mode == "ssh" else _gpg_verdict)(res, subject)
        if verdict.kind == "bad_signature" and not verdict.signer and self.mode == "ssh":
            verdict = Verdict(False, verdict.kind, self._ssh_signer(armored, env), subject)
        return self._say(verdict)

    def _ssh_signer(self, armored: str, env: dict[str, str]) -> str:
        """Who a bad ssh signature claims to be: the principal its key has in the list (the
        key is inside the signature, so this needs no valid signature)."""
        with tempfile.NamedTemporaryFile("w", prefix="watcher-sig-") as sig:
            sig.write(armored)
            sig.flush()
            res = run(["ssh-keygen", "-Y", "find-principals", "-s", sig.name, "-f",
                       self._signers_file()], step="verify", timeout=self.timeout, env=env,
                      check=False)
        lines = [ln.strip() for ln in res.output.splitlines() if ln.strip()]
        return f"claims {lines[0]}" if res.ok and lines else "a key not in the list"

    def _say(self, verdict: Verdict) -> Verdict:
        log.info("verify.verdict", subject=verdict.subject, verdict=verdict.kind,
                 signer=verdict.signer)
        return verdict

    def _signature_of(self, kind: str, rev: str,
                      env: dict[str, str]) -> tuple[str | None, str]:
        """("ssh" | "gpg" | None for unsigned, the armored signature), read from the object
        itself: a commit's `gpgsig` header, a tag's trailing signature block."""
        with tempfile.NamedTemporaryFile(prefix="watcher-object-") as tmp:
            res = run(["git", "-C", str(self.mirror), "cat-file", kind, rev], step="verify",
                      timeout=self.timeout, env=env, stdout_path=Path(tmp.name), check=False)
            if res.timed_out:
                raise TransientError(f"git cat-file timed out after {self.timeout:g}s")
            text = Path(tmp.name).read_bytes().decode("utf-8", "replace")
        if not res.ok:
            raise GitError(f"{rev} is not a {kind} in the mirror: {res.output[-200:]}")
        if kind == "commit":
            header = text.split("\n\n", 1)[0]
            m = re.search(r"^gpgsig(?:-sha256)? (.*(?:\n .*)*)", header, re.M)
            if not m:
                return None, ""
            text = m.group(1).replace("\n ", "\n")
        for fmt, begin in (("ssh", "-----BEGIN SSH SIGNATURE-----"),
                           ("gpg", "-----BEGIN PGP SIGNATURE-----")):
            if begin in text:
                return fmt, text[text.index(begin):]
        return None, ""

    def _signers_file(self) -> str:
        path = self.allowed_signers
        if not path or not os.access(path, os.R_OK):
            raise ConfigError(f"git.allowed_signers_file: cannot read {path or '(not set)'}")
        return path

    # -- the private keyring -----------------------------------------------------------
    def _ensure_keyring(self) -> Path:
        """`.watcher/gnupg/` holding exactly the keys of `gpg_keys_file` as it is now."""
        try:
            armored = Path(self.gpg_keys).read_bytes() if self.gpg_keys else None
        except OSError as exc:
            raise ConfigError(f"git.gpg_keys_file: cannot read {self.gpg_keys}: "
                              f"{exc.strerror}") from None
        if armored is None:
            raise ConfigError("git.gpg_keys_file must be set with git.verify = \"gpg\"")
        digest = hashlib.sha256(armored).hexdigest()
        stamp = self.keyring / _STAMP
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return self.keyring
        self.keyring.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".gnupg-", dir=self.keyring.parent))
        try:
            (tmp / "gpg.conf").write_text("no-autostart\nno-permission-warning\n")
            res = run(["gpg", "--batch", "--no-tty", "--quiet", "--import", self.gpg_keys],
                      step="verify", timeout=self.timeout,
                      env=clean_env({"GNUPGHOME": str(tmp), "LC_ALL": "C"}), check=False)
            if not res.ok:
                raise ConfigError(f"git.gpg_keys_file: gpg could not import {self.gpg_keys}: "
                                  f"{res.output.splitlines()[-1] if res.output else 'no output'}")
            (tmp / _STAMP).write_text(digest + "\n")
            old = self.keyring.with_name(f".{KEYRING}-old-{os.getpid()}")
            if self.keyring.exists():
                os.replace(self.keyring, old)
            os.replace(tmp, self.keyring)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("verify.keyring_built", keyring=str(self.keyring))
        return self.keyring


def _ssh_verdict(res: Result, subject: str) -> Verdict:
    out = res.output
    good = _SSH_GOOD.search(out)
    if res.ok and good:
        return Verdict(True, "good", good.group("who"), subject)
    if "incorrect signature" in out or "Could not verify signature" in out:
        who = good.group("who") if good else ""
        return Verdict(False, "bad_signature", who, subject)
    key = _SSH_KEY.search(out)
    if "No principal matched" in out or key or good:
        signer = good.group("key") if good else key.group("key") if key else ""
        return Verdict(False, "unknown_key", signer.strip(), subject)
    return Verdict(False, "unsigned", "", subject)


def _gpg_verdict(res: Result, subject: str) -> Verdict:
    lines = {m.group("what"): (m.group("key"), (m.group("who") or "").strip())
             for m in _GPG.finditer(res.output)}
    if res.ok and "GOODSIG" in lines:
        key, who = lines["GOODSIG"]
        return Verdict(True, "good", f"{who} [{key}]" if who else key, subject)
    for bad in ("BADSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "GOODSIG"):
        if bad in lines:  # GOODSIG with a failing exit: git refused it (trust level)
            key, who = lines[bad]
            return Verdict(False, "bad_signature", f"{who} [{key}]" if who else key, subject)
    if "NO_PUBKEY" in lines or "ERRSIG" in lines:
        key = (lines.get("NO_PUBKEY") or lines["ERRSIG"])[0]
        return Verdict(False, "unknown_key", f"key {key}", subject)
    return Verdict(False, "unsigned", "", subject)
