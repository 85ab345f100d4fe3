"""Fixtures of the fleet tests (helpers: tests/fleet_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_helpers import write_fleet


@pytest.fixture
def fleet_file(tmp_path) -> Path:
    return write_fleet(tmp_path / "fleet")


@pytest.fixture
def failing_fleet_file(tmp_path) -> Path:
    """Two models, of which m0 has an accuracy budget no INT8 model meets: its x86-int8 task is refused."""
    path = write_fleet(tmp_path / "failing", count=2)
    path.write_text(path.read_text().replace(
        "  - source: m0.onnx\n", "  - {source: m0.onnx, min-cosine: 0.9999999, max-drop: 0.0}\n"))
    return path
