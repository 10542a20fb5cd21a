"""Fixtures for the smartwatch unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The project root first: an editable install made while smartwatch/ was empty maps
# `smartwatch` as a namespace package; the checkout's regular package must win.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from smartwatch_replay import ReplayedMachine


@pytest.fixture
def machine(tmp_path: Path) -> ReplayedMachine:
    return ReplayedMachine(tmp_path / "machine")
