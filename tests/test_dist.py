"""The installable package: `make dist`, and the wheel installed alone into a fresh venv."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.site import REPO_ROOT

pytestmark = pytest.mark.slow

# The wheels of watcher's dependencies, downloaded once: later runs install offline.
DEPS = REPO_ROOT / "build" / "dist-deps"


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # Neither this checkout (PYTHONPATH) nor the caller's WATCHER_* may leak into the venv.
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith("WATCHER_")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_make_dist_builds_a_wheel_that_works_alone(tmp_path: Path) -> None:
    """`make dist` builds an sdist and a wheel without one warning; the wheel carries the
    init templates and an SPDX license, installs into a fresh venv from local wheels only,
    and its `watcher --version`, `watcher init --help` and `watcher init` work."""
    dist = tmp_path / "dist"
    uv = Path(sys.executable).parent / "uv"
    build = _run(["make", "-s", "dist", f"UV={uv}", f"DIST={dist}"], REPO_ROOT)
    output = build.stdout + build.stderr
    assert build.returncode == 0, output[-3000:]
    assert "warning" not in output.lower(), output[-3000:]
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    assert sdist.stat().st_size > 0

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(meta).decode()
    shipped = {p.name for p in (REPO_ROOT / "watcher" / "init" / "templates").iterdir()}
    assert {n.rsplit("/", 1)[1] for n in names if "/init/templates/" in n} == shipped
    assert "License-Expression: MIT" in metadata

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], tmp_path).returncode == 0
    install = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
               "--no-index", "--find-links", str(DEPS), str(wheel)]
    res = _run(install, tmp_path)
    if res.returncode != 0:  # first run on this machine: fetch the dependencies' wheels once
        fetch = _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                      "--only-binary", ":all:", "--dest", str(DEPS), str(wheel)], tmp_path)
        assert fetch.returncode == 0, fetch.stderr[-3000:]
        for stale in DEPS.glob("deploy_watcher-*"):
            stale.unlink()
        res = _run(install, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    watcher = str(venv / "bin" / "watcher")
    version = _run([watcher, "--version"], tmp_path)
    assert version.returncode == 0, version.stderr
    lines = version.stdout.splitlines()
    assert lines[0] == "watcher 0.1.0"
    assert lines[1].startswith(f"python {platform.python_version()} ({venv}/bin/python")
    assert lines[2].startswith("venv installer: uv ")
    helped = _run([watcher, "init", "--help"], tmp_path)
    assert helped.returncode == 0 and "--from-checkout" in helped.stdout

    where = _run([str(venv / "bin" / "python"), "-c", "import watcher; print(watcher.__file__)"],
                 tmp_path)
    assert where.stdout.startswith(str(venv)), where.stdout  # the wheel's, not this checkout's
    made = _run([watcher, "init", "site", "--app", "shop", "--remote", str(tmp_path / "none")],
                tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    assert (tmp_path / "site" / "supervisor" / "conf.d" / "shop.conf").is_file()
    assert (tmp_path / "site" / "NEXT-STEPS.md").is_file()
