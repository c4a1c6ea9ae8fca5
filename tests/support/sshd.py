"""A real OpenSSH server on 127.0.0.1 for tests: its own host key, config and pid file.

    with Sshd(tmp_path / "sshd", authorized=[deploy.public]) as sshd:
        url = sshd.url("/tmp/x/remote.git")      # ssh://root@127.0.0.1:<port>/tmp/x/remote.git
        known_hosts.write_text(sshd.known_hosts_line())

Debian's openssh-server (`/usr/sbin/sshd`, installed by scripts/system-deps.sh) runs in the
foreground (`-D -e`) as the test's own child, logging to `<dir>/sshd.log`; only the current
user may log in, only by key. `KeyPair.make(path)` writes an ed25519 key pair with
ssh-keygen.
"""

from __future__ import annotations

import getpass
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from support.supervisord import free_port

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: str  # the .pub line: "ssh-ed25519 AAAA... comment"

    @classmethod
    def make(cls, path: Path, comment: str = "watcher-test") -> KeyPair:
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(path)], check=True, capture_output=True, timeout=30)
        path.chmod(0o600)
        return cls(path, path.with_suffix(".pub").read_text().strip())


class Sshd:
    def __init__(self, directory: Path, authorized: list[str], user: str | None = None) -> None:
        if not SSHD.exists():
            raise RuntimeError(f"{SSHD} is missing: run scripts/system-deps.sh")
        directory.mkdir(parents=True, exist_ok=True)
        self.dir, self.user, self.port = directory, user or getpass.getuser(), free_port()
        self.host_key = KeyPair.make(directory / "ssh_host_ed25519_key", "test-host")
        authorized_keys = directory / "authorized_keys"
        authorized_keys.write_text("".join(line + "\n" for line in authorized))
        self.pid_file = directory / "sshd.pid"
        self.config = directory / "sshd_config"
        self.config.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {self.host_key.private}\n"
            f"AuthorizedKeysFile {authorized_keys}\nPidFile {self.pid_file}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
            f"AllowUsers {self.user}\nStrictModes no\nUsePAM no\nUseDNS no\n"
            "X11Forwarding no\nAllowTcpForwarding no\nPrintMotd no\nLogLevel VERBOSE\n")
        self.log_path = directory / "sshd.log"
        self._log = self.log_path.open("wb")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Sshd:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not answer on port {self.port}: {self.log()}")
            time.sleep(0.05)

    def url(self, path: Path | str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def known_hosts_line(self) -> str:
        """This server's entry for a known_hosts file (non-standard port: `[host]:port`)."""
        kind, blob = self.host_key.public.split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the listener (and with it, any session it still runs)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Sshd:
        return self.start() if self.proc is None else self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

