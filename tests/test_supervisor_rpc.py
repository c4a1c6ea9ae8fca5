"""watcher.parts.supervisor_rpc against a real supervisord running real Gunicorn."""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support.supervisord import (
    SupervisordProcess,
    free_port,
    gunicorn_program,
    processes_mentioning,
    supervisord_factory,
    write_wsgi_app,
)

from watcher.errors import ConfigError, SupervisorFault, SupervisorUnreachable
from watcher.parts.supervisor_rpc import Supervisor

SLEEPER = """\
import pathlib, signal, sys, time
marker = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGHUP, lambda *_: marker.write_text("hup"))
while True:
    time.sleep(0.2)
"""

MakeSupervisord = Callable[..., SupervisordProcess]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("svrpc")


@pytest.fixture(scope="module")
def leftovers(base: Path) -> Iterator[list[str]]:
    """Paths whose processes must all be gone once the module's supervisords are stopped."""
    marks = [str(base)]
    yield marks
    left = [proc for mark in marks for proc in processes_mentioning(mark)]
    assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="module")
def make_sv(
    tmp_path_factory: pytest.TempPathFactory, leftovers: list[str]
) -> Iterator[MakeSupervisord]:
    factory = supervisord_factory(tmp_path_factory)
    create = next(factory)

    def make(*args: object, **kwargs: object) -> SupervisordProcess:
        sv = create(*args, **kwargs)
        leftovers.append(str(sv.tmpdir))
        return sv

    yield make
    factory.close()  # runs the generator's finally: stops every supervisord


@pytest.fixture(scope="module")
def sv(make_sv: MakeSupervisord) -> SupervisordProcess:
    return make_sv()


@pytest.fixture
def sup(sv: SupervisordProcess) -> Iterator[Supervisor]:
    client = Supervisor(sv.url, timeout=5)
    yield client
    client.close()


def add_sleeper(sv: SupervisordProcess, base: Path, name: str, extra: str = "") -> Path:
    """Add a program that writes `<name>.hup` when it gets SIGHUP; return that marker."""
    script = base / "sleeper.py"
    script.write_text(SLEEPER)
    marker = base / f"{name}.hup"
    body = f"command={sys.executable} {script} {marker}\nautostart=false\nstartsecs=1\n"
    sv.add_program(name, body + extra)
    return marker


def get_body(port: int, timeout: float = 10.0) -> str:
    """GET / from the app on `port`, retrying while it boots."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                return str(resp.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def short_socket_path() -> Path:
    return Path(tempfile.mkdtemp(prefix="svt", dir="/tmp")) / "s.sock"


def test_check_returns_running(sup: Supervisor) -> None:
    """check() reports supervisord's own state name."""
    assert sup.check() == "RUNNING"


def test_missing_socket_is_unreachable() -> None:
    """A socket path with nothing behind it is SupervisorUnreachable naming the URL."""
    url = "unix:///tmp/watcher-no-such-dir/s.sock"
    with pytest.raises(SupervisorUnreachable, match="does not exist") as exc:
        Supervisor(url).check()
    assert url in str(exc.value)
    assert exc.value.transient


def test_stale_socket_is_refused() -> None:
    """A socket file nobody listens on (supervisord died) is SupervisorUnreachable."""
    path = short_socket_path()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    try:
        with pytest.raises(SupervisorUnreachable, match="connection refused"):
            Supervisor(f"unix://{path}").check()
    finally:
        shutil.rmtree(path.parent)


def test_silent_socket_times_out() -> None:
    """A server that accepts but never answers fails within the client's timeout."""
    path = short_socket_path()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        started = time.monotonic()
        with pytest.raises(SupervisorUnreachable, match=r"no answer within 0\.3s"):
            Supervisor(f"unix://{path}", timeout=0.3).check()
        assert time.monotonic() - started < 3
    shutil.rmtree(path.parent)


def test_wrong_password_is_refused_without_leaking_it(make_sv: MakeSupervisord) -> None:
    """A 401 says the credentials were refused, and no text or log carries the password."""
    sv_http = make_sv(http=True, username="watcher", password="right-canary-7f3a")
    wrong = Supervisor(sv_http.url, "watcher", "wrong-canary-91bd")
    with capture_logs() as logs, pytest.raises(SupervisorFault) as exc:
        wrong.check()
    assert "refused the username/password" in str(exc.value)
    assert sv_http.url in str(exc.value)
    for text in (str(exc.value), repr(exc.value.__cause__), repr(wrong), repr(logs)):
        assert "canary" not in text
    assert Supervisor(sv_http.url, "watcher", "right-canary-7f3a").check() == "RUNNING"


def test_url_with_credentials_is_a_config_error() -> None:
    """Credentials inside supervisor.url are refused without being echoed."""
    with pytest.raises(ConfigError) as exc:
        Supervisor("http://watcher:url-canary@127.0.0.1:9001")
    assert "url-canary" not in str(exc.value)


def test_unknown_program_is_a_fault_naming_it(sup: Supervisor) -> None:
    """info() of a program supervisord does not know raises SupervisorFault naming it."""
    with pytest.raises(SupervisorFault, match="no program named nosuchprog in supervisord"):
        sup.info("nosuchprog")


def test_plain_name_is_group_colon_name(
    sup: Supervisor, sv: SupervisordProcess, base: Path
) -> None:
    """A plain program name means the process of the same name in the group of that name."""
    add_sleeper(sv, base, "plain")
    assert sup.info("plain") == sup.info("plain:plain")
    assert (sup.info("plain").group, sup.info("plain").name) == ("plain", "plain")


def test_reload_hup_starts_a_stopped_program(
    sup: Supervisor, sv: SupervisordProcess, base: Path
) -> None:
    """reload("hup") on a program that never ran starts it (first deploy), and a second
    reload("hup") signals the same process instead of restarting it."""
    marker = add_sleeper(sv, base, "first")
    assert sup.info("first").statename == "STOPPED"
    started = sup.reload("first", "hup", wait_timeout=10)
    assert started.statename == "RUNNING" and started.pid > 0
    assert not marker.exists()

    with capture_logs() as logs:
        again = sup.reload("first", "hup", wait_timeout=10)
    assert again.pid == started.pid
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "hup"
    assert {"event": "supervisor.hup", "program": "first", "log_level": "info"} in logs


def test_gunicorn_hup_keeps_master_and_replaces_worker(
    sup: Supervisor, sv: SupervisordProcess, base: Path
) -> None:
    """After reload("hup") Gunicorn's master pid is the same and a new worker serves."""
    port = free_port()
    app_dir = base / "hup_app"
    write_wsgi_app(app_dir)
    sv.add_program("web_hup", gunicorn_program(app_dir, port))
    master = sup.reload("web_hup", "hup", wait_timeout=15).pid
    worker = get_body(port)
    assert int(worker) != master

    assert sup.reload("web_hup", "hup", wait_timeout=15).pid == master
    deadline = time.monotonic() + 10
    while (served := get_body(port)) == worker and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served != worker
    assert sup.pid("web_hup") == master


def test_gunicorn_restart_changes_master(
    sup: Supervisor, sv: SupervisordProcess, base: Path
) -> None:
    """reload("restart") stops and starts the program: a new master pid serves."""
    port = free_port()
    app_dir = base / "restart_app"
    write_wsgi_app(app_dir)
    sv.add_program("web_restart", gunicorn_program(app_dir, port))
    before = sup.start("web_restart", wait_timeout=15).pid
    old_worker = get_body(port)

    after = sup.reload("web_restart", "restart", wait_timeout=15)
    assert after.statename == "RUNNING"
    assert after.pid != before
    assert get_body(port) != old_worker


def test_start_of_crashing_program_fails_fast(sup: Supervisor, sv: SupervisordProcess) -> None:
    """A program that exits at once is a SupervisorFault (spawn error) well within the wait."""
    sv.add_program(
        "crasher", f'command={sys.executable} -c "raise SystemExit(3)"\nautostart=false\n'
    )
    started = time.monotonic()
    with pytest.raises(SupervisorFault, match=r"crasher did not start.*spawn error"):
        sup.start("crasher", wait_timeout=20)
    assert time.monotonic() - started < 5


def test_start_of_missing_command_is_a_fault(sup: Supervisor, sv: SupervisordProcess) -> None:
    """A command that does not exist is a SupervisorFault saying so."""
    sv.add_program("nofile", "command=/nonexistent/bin/gunicorn\nautostart=false\n")
    with pytest.raises(SupervisorFault, match="the command of nofile does not exist"):
        sup.start("nofile", wait_timeout=5)


def test_wait_running_times_out(sup: Supervisor, sv: SupervisordProcess, base: Path) -> None:
    """wait_running gives up after its timeout while the program is still STARTING."""
    add_sleeper(sv, base, "slowstart", extra="startsecs=30\n")
    sv.rpc().startProcess("slowstart", False)
    with pytest.raises(SupervisorFault, match=r"not RUNNING within 0\.5s: STARTING"):
        sup.wait_running("slowstart", timeout=0.5)
    sup.stop("slowstart")
    assert sup.info("slowstart").statename == "STOPPED"


def test_stop_of_stopped_program_is_fine(
    sup: Supervisor, sv: SupervisordProcess, base: Path
) -> None:
    """stop() of a program that is not running returns quietly and leaves it STOPPED."""
    add_sleeper(sv, base, "idle")
    sup.stop("idle")
    assert sup.info("idle").statename == "STOPPED"
    with pytest.raises(SupervisorFault, match="idle has no pid: it is STOPPED"):
        sup.pid("idle")


def test_program_command_returns_the_command_line(
    sup: Supervisor, sv: SupervisordProcess, base: Path
) -> None:
    """program_command gives the configured command line, and None for unknown programs."""
    sv.add_program("cmd", f"command=/bin/sleep 30 --chdir {base}/current\nautostart=false\n")
    assert sup.program_command("cmd") == f"/bin/sleep 30 --chdir {base}/current"
    assert sup.program_command("cmd:cmd") == f"/bin/sleep 30 --chdir {base}/current"
    assert sup.program_command("nosuchprog") is None
