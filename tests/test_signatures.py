"""Signed commits and tags (watcher/parts/signatures.py) with real ssh-keygen and gpg keys, made
in a temp HOME and GNUPGHOME; the verifier's keyring is its own, under `.watcher/gnupg`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from watcher.errors import ConfigError
from watcher.parts.signatures import Verifier


@dataclass
class Signed:
    base: Path
    mirror: Path
    shas: dict[str, str]
    signers: Path  # allowed signers: alice only
    gpg_keys: Path  # armored public key: alice only
    env: dict[str, str]


def sh(*argv: str, cwd: Path, env: dict[str, str], stdin: str | None = None) -> str:
    return subprocess.run(argv, cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    """A repo whose commits are signed (ssh and gpg) by alice, by mallory, not at all, or
    tampered with after signing; pushed into a bare mirror."""
    base = tmp_path_factory.mktemp("sig")
    home, gnupg = base / "home", base / "gnupg"
    home.mkdir()
    gnupg.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "WATCHER_"))}
    env.update(HOME=str(home), GNUPGHOME=str(gnupg), GIT_CONFIG_NOSYSTEM="1",
               GIT_AUTHOR_NAME="Alice", GIT_AUTHOR_EMAIL="alice@example.com",
               GIT_COMMITTER_NAME="Alice", GIT_COMMITTER_EMAIL="alice@example.com")
    for who in ("alice", "mallory"):
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f", str(base / who),
           cwd=base, env=env)
        sh("gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "",
           "--quick-gen-key", f"{who} <{who}@example.com>", "ed25519", "sign", "never",
           cwd=base, env=env)
    signers = base / "allowed_signers"
    signers.write_text(f"alice@example.com {(base / 'alice.pub').read_text()}")
    gpg_keys = base / "keys.asc"
    gpg_keys.write_text(sh("gpg", "--armor", "--export", "alice@example.com", cwd=base, env=env))
    work = base / "work"
    sh("git", "init", "-q", "-b", "main", str(work), cwd=base, env=env)
    shas: dict[str, str] = {}

    def commit(name: str, *sign: str) -> None:
        (work / "f").write_text(name + "\n")
        sh("git", "add", "f", cwd=work, env=env)
        sh("git", *sign, "commit", "-q", *(["-S"] if sign else []), "-m", name, cwd=work, env=env)
        shas[name] = sh("git", "rev-parse", "HEAD", cwd=work, env=env)

    ssh = ("-c", "gpg.format=ssh", "-c", "user.signingkey=")
    commit("ssh_alice", *ssh[:3], ssh[3] + str(base / "alice.pub"))
    commit("ssh_mallory", *ssh[:3], ssh[3] + str(base / "mallory.pub"))
    commit("unsigned")
    commit("gpg_alice", "-c", "user.signingkey=alice@example.com")
    commit("gpg_mallory", "-c", "user.signingkey=mallory@example.com")
    for name in ("ssh_alice", "gpg_alice"):  # same signature, other message: a bad signature
        raw = sh("git", "cat-file", "commit", shas[name], cwd=work, env=env)
        shas[name + "_tampered"] = sh("git", "hash-object", "-t", "commit", "-w", "--stdin",
                                      cwd=work, env=env, stdin=raw.replace(name, name + "!") + "\n")
        sh("git", "tag", f"keep-{name}", shas[name + "_tampered"], cwd=work, env=env)
    sh("git", *ssh[:3], ssh[3] + str(base / "alice.pub"), "tag", "-s", "-m", "t", "v1.0.0",
       shas["ssh_alice"], cwd=work, env=env)
    sh("git", "-c", "user.signingkey=alice@example.com", "tag", "-s", "-m", "t", "v2.0.0",
       shas["gpg_alice"], cwd=work, env=env)
    sh("git", "tag", "-a", "-m", "t", "v3.0.0", shas["gpg_alice"], cwd=work, env=env)
    mirror = base / "mirror.git"
    sh("git", "clone", "-q", "--mirror", str(work), str(mirror), cwd=base, env=env)
    try:
        yield Signed(base, mirror, shas, signers, gpg_keys, env)
    finally:  # the signer's agent, started by signing in our temp GNUPGHOME
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False, timeout=30)


def ssh_verifier(s: Signed, state: Path) -> Verifier:
    return Verifier("ssh", s.mirror, state, allowed_signers=str(s.signers))


def gpg_verifier(s: Signed, state: Path) -> Verifier:
    return Verifier("gpg", s.mirror, state, gpg_keys=str(s.gpg_keys))


@pytest.mark.parametrize(("commit", "kind", "signer"), [
    ("ssh_alice", "good", "alice@example.com"),
    ("ssh_mallory", "unknown_key", "ED25519 key SHA256:"),
    ("unsigned", "unsigned", ""),
    ("ssh_alice_tampered", "bad_signature", "claims alice@example.com"),
    ("gpg_alice", "unknown_key", "a gpg key"),  # an allowed-signers list knows no gpg key
])
def test_ssh_verdicts(signed: Signed, tmp_path: Path, commit: str, kind: str,
                      signer: str) -> None:
    """`verify = "ssh"`: a commit signed by a listed key is good (the principal named); a key
    not in the list, no signature and a tampered commit each get their own verdict."""
    verdict = ssh_verifier(signed, tmp_path).commit(signed.shas[commit])
    assert verdict.kind == kind, verdict
    assert verdict.ok is (kind == "good")
    assert signer in verdict.signer
    assert verdict.subject in verdict.message


@pytest.mark.parametrize(("commit", "kind", "signer"), [
    ("gpg_alice", "good", "alice <alice@example.com>"),
    ("gpg_mallory", "unknown_key", "key "),
    ("unsigned", "unsigned", ""),
    ("gpg_alice_tampered", "bad_signature", "alice <alice@example.com>"),
])
def test_gpg_verdicts_with_a_private_keyring(signed: Signed, tmp_path: Path, commit: str,
                                             kind: str, signer: str) -> None:
    """`verify = "gpg"`: keys come from `gpg_keys_file` into `.watcher/gnupg` only, so
    mallory's key, which sits in the user's own GNUPGHOME, is still unknown."""
    verifier = gpg_verifier(signed, tmp_path)
    verdict = verifier.commit(signed.shas[commit])
    assert (verdict.kind, verdict.ok) == (kind, kind == "good"), verdict
    assert signer in verdict.signer
    assert (tmp_path / "gnupg" / "pubring.kbx").is_file() is (kind != "unsigned")


def test_signed_tags(signed: Signed, tmp_path: Path) -> None:
    """verify-tag: a tag signed by an allowed key is good, an unsigned annotated tag is not."""
    assert ssh_verifier(signed, tmp_path).tag("v1.0.0").kind == "good"
    assert gpg_verifier(signed, tmp_path).tag("v2.0.0").kind == "good"
    assert gpg_verifier(signed, tmp_path).tag("v3.0.0").kind == "unsigned"


def test_keyring_follows_the_keys_file(signed: Signed, tmp_path: Path) -> None:
    """A key taken out of `gpg_keys_file` is no longer trusted at the next check (no restart),
    and no gpg-agent is left running for the private keyring."""
    keys = tmp_path / "keys.asc"
    keys.write_text(signed.gpg_keys.read_text())
    verifier = Verifier("gpg", signed.mirror, tmp_path / "state", gpg_keys=str(keys))
    assert verifier.commit(signed.shas["gpg_alice"]).ok
    keys.write_text(sh("gpg", "--armor", "--export", "mallory@example.com", cwd=tmp_path,
                       env=signed.env))
    assert verifier.commit(signed.shas["gpg_alice"]).kind == "unknown_key"
    assert verifier.commit(signed.shas["gpg_mallory"]).ok
    agents = subprocess.run(["pgrep", "-f", f"gpg-agent --homedir {tmp_path}"],
                            capture_output=True, text=True, check=False).stdout
    assert agents == ""


def test_missing_key_files_are_config_errors(signed: Signed, tmp_path: Path) -> None:
    """An unreadable allowed-signers or keys file is a config error naming the key."""
    with pytest.raises(ConfigError, match="allowed_signers_file"):
        Verifier("ssh", signed.mirror, tmp_path, allowed_signers=str(tmp_path / "no")).commit(
            signed.shas["ssh_alice"])
    with pytest.raises(ConfigError, match="gpg_keys_file"):
        Verifier("gpg", signed.mirror, tmp_path, gpg_keys=str(tmp_path / "no")).commit(
            signed.shas["gpg_alice"])
