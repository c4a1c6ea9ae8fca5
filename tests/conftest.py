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


# The longest test files, longest first (seconds each took in a full run on two busy cores).
# With `--dist loadfile` xdist hands out files in collection order, so the long ones start
# first and the short ones fill in around them, instead of one long file starting last and
# running alone at the end.
LONGEST_FIRST = (
    "test_disk_bounded", "test_fault_matrix", "test_crash_safety", "test_fleet_rollout",
    "test_fullstack", "test_bluegreen", "test_secrets", "test_deploy_e2e", "test_control_e2e",
    "test_operator_commands", "test_daemon", "test_migration_safety", "test_forge_deploys",
    "test_zero_downtime_nginx", "test_smoke_e2e", "test_init", "test_plan_command",
    "test_deploy_exceptions", "test_installer",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}

    def key(item: pytest.Item) -> int:
        return rank.get(item.path.stem, len(rank))

    items.sort(key=key)  # stable: the order inside a file, and of the other files, is kept
