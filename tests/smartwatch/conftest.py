"""Fixtures for the smartwatch unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smartwatch_replay import ReplayedMachine


@pytest.fixture
def machine(tmp_path: Path) -> ReplayedMachine:
    return ReplayedMachine(tmp_path / "machine")
