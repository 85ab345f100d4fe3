"""Fixtures of the fleet tests (helpers: tests/fleet_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_helpers import write_fleet


@pytest.fixture
def fleet_file(tmp_path) -> Path:
    return write_fleet(tmp_path / "fleet")
