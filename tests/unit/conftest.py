"""Fixtures for the unit tree: the state store's tests run on both backends (`backend`:
SQLite as a unit test, a real etcd started once per session as an integration test)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etcd_fixture import backend, etcd_server

__all__ = ["backend", "etcd_server"]
