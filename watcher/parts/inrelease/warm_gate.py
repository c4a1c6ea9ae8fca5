"""A warm gate: an interpreter of a venv that has imported Django's own modules and waits to
run the next deploy's gate (`manage.py shell -c ...`) in a release of that venv.

Started detached by watcher after a deploy (`watcher.parts.warm_gate`), under the venv's own
python: `python warm_gate.py SOCKET IDLE_S MARKER`, its KEY the first line of its stdin (a
digest of the environment, which holds secrets: kept off the command line `ps` shows). Stdlib
only; it never imports watcher, and the app's modules only once it is told which release to
run.

1. It imports Django's modules that need no settings (the list shipped in gunicorn.conf.py
   plus the management commands the gate runs), then listens on SOCKET (a temp name renamed
   into place, so a connect finds either nothing or a ready gate).
2. One connection: a JSON line {key, argv, cwd, env} with one file descriptor (the write end
   of watcher's output pipe). A key other than KEY (another venv, another environment) is
   answered {"ok": false} and it exits: watcher then runs the gate cold.
3. Otherwise it answers {"ok": true, "pid": ...}, makes the fd its stdout and stderr and
   /dev/null its stdin, takes the release's cwd, environment, argv and sys.path[0] (what
   `python manage.py` would have), runs manage.py as __main__ and exits as the interpreter
   does (threads joined, the app's atexit handlers run); {"exit": code} is sent last.

It exits without running anything after IDLE_S seconds, when SOCKET is removed or replaced
(another gate took its place, or the site is gone) or when MARKER (the venv's `.complete`)
disappears (the venv was pruned). It is its own session leader: watcher kills its group on
a timeout, as it does for every step.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import socket
import sys
import time
import traceback

PRELOAD = (
    # the list of examples/mysite/gunicorn.conf.py's DJANGO_PRELOAD
    "django.core.handlers.wsgi", "django.core.wsgi", "django.db.models", "django.urls",
    "django.middleware.security", "django.middleware.common", "django.middleware.csrf",
    "django.middleware.clickjacking", "django.template.backends.django",
    "django.db.backends.sqlite3.base", "django.db.backends.mysql.base",
    "django.db.backends.postgresql.base",
    # and what the gate's boot runs
    "django.core.management", "django.core.management.commands.shell",
    "django.core.management.commands.check", "django.core.checks",
    "django.db.migrations.executor", "django.core.servers.basehttp", "django.test.client",
)
LOOK_EVERY_S = 2.0


def preload() -> None:
    for name in PRELOAD:
        # A database driver that is not installed: the run says so if the app needs it.
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def listen(path: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{path}.{os.getpid()}"
    server.bind(tmp)
    server.listen(1)
    os.rename(tmp, path)
    return server


def ours(path: str, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def accept(server: socket.socket, path: str, idle_s: float, marker: str) -> socket.socket | None:
    """One connection, or None once idle for `idle_s`, the socket no longer ours or the
    venv's marker gone. Either way the socket is removed (if still ours) before returning:
    one run per gate."""
    inode = os.stat(path).st_ino
    deadline = time.monotonic() + idle_s
    conn = None
    while (left := deadline - time.monotonic()) > 0:
        server.settimeout(min(LOOK_EVERY_S, left))
        try:
            conn, _ = server.accept()
            break
        except socket.timeout:  # noqa: UP041 - an alias only since 3.10: the venv's python may be older
            if not ours(path, inode) or not os.path.exists(marker):
                break
    if ours(path, inode):
        os.unlink(path)
    return conn


def run(go: dict, out_fd: int) -> int:
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.close(out_fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.chdir(go["cwd"])
    os.environ.clear()
    os.environ.update(go["env"])
    sys.argv = list(go["argv"][1:])  # argv[0] is the python it would have run under
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:  # reported as python would, then the exit code
        traceback.print_exc()
        code = 1
    return code


def main(path: str, key: str, idle_s: float, marker: str) -> None:
    preload()
    server = listen(path)
    conn = accept(server, path, idle_s, marker)
    server.close()
    if conn is None:
        return
    conn.settimeout(30.0)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 1)
    go = json.loads(data.decode("utf-8")) if data else {}
    if go.get("key") != key or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        conn.sendall(b'{"ok": false}\n')
        return
    conn.sendall(json.dumps({"ok": True, "pid": os.getpid()}).encode() + b"\n")
    ended: list[int] = []
    # Registered before anything of the app: atexit runs it last, after the app's own exit
    # handlers (whatever they print is output too) and once its threads were joined.
    atexit.register(report_exit, conn, ended)
    ended.append(run(go, fds[0]))
    sys.exit(ended[0])  # the interpreter's own exit, as `python manage.py` ends


def report_exit(conn: socket.socket, ended: list[int]) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # the reader went away: the code still goes back
            stream.flush()
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"exit": ended[0] if ended else 1}).encode() + b"\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.stdin.readline().strip(), float(sys.argv[2]), sys.argv[3])
