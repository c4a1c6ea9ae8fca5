"""Shared fixtures. Support code lives in tests/support/ and talks to real parts only."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.parts import runner

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["support.fixtures", "support.faults"]


@pytest.fixture(autouse=True)
def _no_shutdown_left_over() -> Iterator[None]:
    """Each test starts without the process-wide shutdown flag: a test that stops an
    in-process daemon or cuts a step short must not make the next one in the same worker
    (pytest-xdist runs many files in one process) refuse to start its steps."""
    runner.CANCEL.clear()
    yield
    runner.CANCEL.clear()
