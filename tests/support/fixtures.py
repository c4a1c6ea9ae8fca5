"""Fixtures and helpers shared by the end-to-end and CLI tests.

    def test_x(site_factory):          # module-scoped: every Site it made is closed after
        site = site_factory(health_timeout="6s")

`run_cli(*argv, env=...)` runs the real `python -m watcher` with exactly the argv given (no
`--config` added, unlike `Site.watcher`) and an environment free of the caller's WATCHER_*
variables, so a test controls every override.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from support.site import REPO_ROOT, Site


def run_cli(*argv: str, env: Mapping[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m watcher *argv` as a subprocess, with only the given WATCHER_* variables."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "watcher", *argv], capture_output=True, text=True,
        timeout=timeout, env=full, check=False, cwd=REPO_ROOT,
    )


@pytest.fixture(scope="module")
def site_factory() -> Iterator[Callable[..., Site]]:
    """`make(**Site kwargs)`: start sandboxes for one test module; all closed at its end."""
    made: list[Site] = []

    def make(**kwargs: Any) -> Site:
        site = Site(**kwargs)
        made.append(site)
        return site

    try:
        yield make
    finally:
        for site in reversed(made):
            site.close()
