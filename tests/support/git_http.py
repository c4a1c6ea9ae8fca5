"""`git http-backend` behind a small HTTP server on 127.0.0.1 that demands a token.

    with GitHttp(project_root=remote.parent, token="t0k3n") as srv:
        url = srv.url("remote.git")          # http://127.0.0.1:<port>/remote.git
        srv.seen                             # [(method, path, status), ...]

Every request must carry `Authorization: Basic base64(x-access-token:<token>)` (the way
GitHub and Gitea take an access token); anything else is answered 401 with
`WWW-Authenticate: Basic`. An authorised request runs `git http-backend` as a CGI program,
once per request. With `redirect_to`, every request is answered 302 to that base URL instead
(a remote that moved to another host); `token_seen` counts the requests that carried the
token either way. While a request is served, the server also looks through every process's
command line for the token (`argv_leaks`): the git client is alive and waiting then, so a
token passed to it in argv would show there.
"""

from __future__ import annotations

import base64
import hmac
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

USERNAME = "x-access-token"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: GitHttp


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads `seen` instead."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        owner = self.server.owner
        if owner.authorised(self.headers.get("Authorization", "")):
            owner.token_seen += 1
        elif owner.redirect_to is None:
            self._answer(401, [("WWW-Authenticate", 'Basic realm="git"')], b"unauthorised\n")
            return
        if owner.redirect_to is not None:
            self._answer(302, [("Location", owner.redirect_to + self.path)], b"")
            return
        owner.scan_argv()
        body = self._body()
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(owner.project_root), "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": USERNAME,
            "REMOTE_ADDR": self.client_address[0],
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        res = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True, timeout=60, check=False)
        head, _, payload = res.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = res.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        if res.returncode != 0 and not head:
            status, payload = 500, res.stderr
        self._answer(status, headers, payload)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.server.owner.record(self.command, self.path, status)
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)


class GitHttp:
    def __init__(self, project_root: Path, token: str, redirect_to: str | None = None) -> None:
        self.project_root, self.token, self.redirect_to = project_root, token, redirect_to
        self.token_seen = 0  # requests that carried the token
        self._expected = "Basic " + base64.b64encode(f"{USERNAME}:{token}".encode()).decode()
        self.seen: list[tuple[str, str, int]] = []
        self.argv_leaks: list[list[str]] = []
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                        daemon=True)
        self._thread.start()

    def url(self, repo: str) -> str:
        return f"http://127.0.0.1:{self.port}/{repo}"

    def authorised(self, header: str) -> bool:
        return hmac.compare_digest(header.encode(), self._expected.encode())

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.seen.append((method, path, status))

    def scan_argv(self) -> None:
        """Note every process whose command line holds the token (or its Basic form)."""
        needles = (self.token.encode(), self._expected.split()[1].encode())
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if any(n in raw for n in needles):
                with self._lock:
                    self.argv_leaks.append([p.decode(errors="replace")
                                            for p in raw.split(b"\0")[:1]])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> GitHttp:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
