"""Shared fixtures. Support code lives in tests/support/ and talks to real parts only."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["support.fixtures", "support.faults"]
