"""build.installer (issue 12): venvs built by uv or by pip, uv's cache shared by hard links,
pip_args uv does not take refused at load, and a broken uv reported plainly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import pytest
from support.fixtures import run_cli
from support.site import EXAMPLE, wheelhouse
from support.supervisord import free_port

from watcher.config_values import unsupported_uv_args
from watcher.errors import StepFailed
from watcher.parts import venv_bytecode, venvs

PIP_ARGS = ["--no-index", "--find-links", str(wheelhouse())]
DJANGO_INIT = Path("lib") / f"python{sys.version_info.major}.{sys.version_info.minor}" \
    / "site-packages" / "django" / "__init__.py"


def build(root: Path, digest: str, installer: str, donor: str | None = None) -> Path:
    release = root / "release"
    if not release.exists():
        shutil.copytree(EXAMPLE, release, ignore=shutil.ignore_patterns(
            "data", "staticfiles", "__pycache__", ".venv"))
        (release / "data").mkdir()
    venvs.build(root / "venvs", digest, release, python=sys.executable,
                 requirements=["requirements.txt"], pip_args=PIP_ARGS, timeout=300,
                 installer=installer, cache=root / ".watcher" / "cache" / "uv", donor=donor)
    return root / "venvs" / digest


def serves(venv: Path, app: Path, marker: str) -> str:
    """Start Gunicorn from `venv` on the example app and return /healthz's body."""
    (app / "REVISION").write_text(marker + "\n")
    port = free_port()
    proc = subprocess.Popen(
        [str(venv / "bin" / "gunicorn"), "--chdir", str(app), "-c", str(app / "gunicorn.conf.py")],
        env={"PATH": "/usr/bin:/bin", "GUNICORN_BIND": f"127.0.0.1:{port}",
             "GUNICORN_WORKERS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return str(resp.read().decode().strip())
            except OSError:
                if proc.poll() is not None:
                    return f"gunicorn exited {proc.returncode}"
                time.sleep(0.2)
        return "no answer"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_venv_by_each_installer_serves_the_example_app(tmp_path: Path, installer: str) -> None:
    """A venv built by uv, and one built by pip, both run Gunicorn serving the example app
    (from the wheel cache, offline); each is marked complete only at the end."""
    venv = build(tmp_path, "aaaa", installer)
    assert venvs.is_complete(tmp_path / "venvs", "aaaa")
    assert serves(venv, tmp_path / "release", f"built-by-{installer}") == (
        f"ok built-by-{installer}")


@pytest.mark.slow
def test_two_uv_venvs_share_a_package_by_hard_links(tmp_path: Path) -> None:
    """Two venvs built by uv with the same package share its files with uv's cache under
    .watcher/cache/uv (one inode, link count above 1), so a second venv costs little disk.
    Built with the first as its donor (the live venv), the second shares every `.pyc` of
    those files too instead of compiling them, and serves the example app."""
    first = build(tmp_path, "aaaa", "uv")
    second = build(tmp_path, "bbbb", "uv", donor="aaaa")
    a, b = (first / DJANGO_INIT).stat(), (second / DJANGO_INIT).stat()
    assert a.st_ino == b.st_ino and a.st_nlink > 2
    assert (tmp_path / ".watcher" / "cache" / "uv").is_dir()
    site = DJANGO_INIT.parents[1]
    first_pyc = {p.relative_to(first): p.stat().st_ino for p in (first / site).rglob("*.pyc")}
    second_pyc = {p.relative_to(second): p.stat().st_ino
                  for p in (second / site).rglob("*.pyc")}
    assert len(first_pyc) > 500 and second_pyc == first_pyc
    assert serves(second, tmp_path / "release", "borrowed") == "ok borrowed"
    assert {p.relative_to(second): p.stat().st_ino
            for p in (second / site).rglob("*.pyc")} == first_pyc  # used, not rewritten


def test_bytecode_is_borrowed_only_for_the_very_same_source(tmp_path: Path) -> None:
    """Of three modules, the one whose source is the donor's own file (a hard link, as uv
    makes) borrows its `.pyc`; one changed, and one new, are compiled by the new venv's
    interpreter; the donor's bytecode is left as it was."""
    site = Path("lib") / f"python{sys.version_info.major}.{sys.version_info.minor}" \
        / "site-packages" / "pkg"
    donor, venv = tmp_path / "venvs" / "old", tmp_path / "venvs" / "new"
    (donor / site).mkdir(parents=True)
    (venv / site).mkdir(parents=True)
    for name, text in (("same", "A = 1\n"), ("changed", "B = 1\n")):
        (donor / site / f"{name}.py").write_text(text)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(donor / "lib")], check=True)
    os.link(donor / site / "same.py", venv / site / "same.py")
    (venv / site / "changed.py").write_text("B = 2\n")
    (venv / site / "new.py").write_text("C = 3\n")
    before = {p.name: p.stat().st_ino for p in (donor / site / "__pycache__").iterdir()}

    linked, missing = venv_bytecode.borrow(donor, venv)

    assert linked == 1
    assert sorted(Path(m).name for m in missing) == ["changed.py", "new.py"]
    tag = sys.implementation.cache_tag
    assert (venv / site / "__pycache__" / f"same.{tag}.pyc").stat().st_ino == before[
        f"same.{tag}.pyc"]
    assert not (venv / site / "__pycache__" / f"changed.{tag}.pyc").exists()
    assert {p.name: p.stat().st_ino for p in (donor / site / "__pycache__").iterdir()} == before


def test_unsupported_pip_args_are_a_config_error_naming_the_argument(tmp_path: Path) -> None:
    """With the uv installer, a pip_args entry uv does not accept is exit 2 at load, naming
    the argument and the way out; the same entry with installer = "pip" loads."""
    def check(installer: str) -> subprocess.CompletedProcess[str]:
        config = tmp_path / f"{installer}.toml"
        config.write_text(f"""
[app]
name = "x"
root = "{tmp_path / 'app'}"
[git]
remote = "{tmp_path / 'no-remote.git'}"
[build]
installer = "{installer}"
pip_args = ["--no-index", "--find-links", "/srv/wheels", "--timeout", "5"]
[supervisor]
url = "unix://{tmp_path / 'no.sock'}"
programs = ["x"]
""")
        return run_cli("status", "--config", str(config))

    res = check("uv")
    assert res.returncode == 2, res.stderr
    assert "'--timeout'" in res.stderr and "build.pip_args" in res.stderr
    assert "Traceback" not in res.stderr
    assert check("pip").returncode == 0


@pytest.mark.parametrize(("args", "bad"), [
    (["--no-index", "-f", "/w", "--find-links=/v", "-f/x", "--pre", "-U"], []),
    (["--index-url", "https://pypi.example/simple", "--only-binary", ":all:"], []),
    (["--prefer-binary", "--no-deps"], ["--prefer-binary"]),
    (["--progress-bar", "off"], ["--progress-bar"]),
    (["--user"], ["--user"]),
])
def test_uv_pip_args_table(args: list[str], bad: list[str]) -> None:
    """pip's options uv takes pass (with their values, in every spelling); others are named."""
    assert unsupported_uv_args(args) == bad


def test_missing_uv_binary_is_a_clear_step_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The uv package without its binary (a broken install, caused here by a stand-in
    module) fails the venv step with what to do, and leaves no half-built venv."""
    def find_uv_bin() -> str:
        raise FileNotFoundError("Could not find the uv binary")

    monkeypatch.setitem(sys.modules, "uv", types.SimpleNamespace(find_uv_bin=find_uv_bin))
    with pytest.raises(StepFailed) as info:
        build(tmp_path, "aaaa", "uv")
    assert info.value.step == "venv"
    assert "binary is missing" in info.value.message
    assert 'build.installer = "pip"' in info.value.message
    assert not (tmp_path / "venvs" / "aaaa").exists()


def test_check_reports_the_installer_and_a_broken_uv(tmp_path: Path) -> None:
    """`watcher check` prints the installer and its version; a uv that cannot run (its
    binary not executable) is a FAIL line with the reason, not a traceback."""
    broken = tmp_path / "shadow" / "uv"
    broken.mkdir(parents=True)
    fake_bin = tmp_path / "uv-not-executable"
    fake_bin.write_text("not a program\n")
    (broken / "__init__.py").write_text(
        f"def find_uv_bin():\n    return {str(fake_bin)!r}\n")
    config = tmp_path / "w.toml"
    config.write_text(f"""
[app]
name = "x"
root = "{tmp_path / 'app'}"
[git]
remote = "{tmp_path / 'no-remote.git'}"
timeout = "5s"
[build]
python = "{sys.executable}"
[supervisor]
url = "unix://{tmp_path / 'no.sock'}"
programs = ["x"]
timeout = "2s"
""")
    good = run_cli("check", "--config", str(config))
    assert "ok    installer: uv: uv " in good.stdout, good.stdout
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"),
                                           os.environ.get("PYTHONPATH", "")])}
    bad = run_cli("check", "--config", str(config), env=env)
    assert "FAIL  installer: uv does not run" in bad.stdout, bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr
    assert bad.returncode != 0
