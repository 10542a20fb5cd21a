"""Where clonefleet keeps its state, cache and secrets on the controller."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Shared cache for downloaded and built images (one build serves every test and fleet)."""
    env = os.environ.get("CLONEFLEET_CACHE_DIR")
    base = Path(env) if env else Path.home() / ".cache" / "clonefleet"
    base.mkdir(parents=True, exist_ok=True)
    return base


def state_root() -> Path:
    env = os.environ.get("CLONEFLEET_STATE_DIR")
    base = Path(env) if env else Path.home() / ".local" / "state" / "clonefleet"
    base.mkdir(parents=True, exist_ok=True)
    return base


def fleet_state_dir(fleet: str) -> Path:
    """Per-fleet folder: state database, keystore, lab VMs, operator key, known_hosts."""
    path = state_root() / fleet
    path.mkdir(parents=True, exist_ok=True)
    return path


def templates_dir() -> Path:
    """The jinja2 templates, from a checkout or from the installed package."""
    checkout = PROJECT_ROOT / "templates"
    if checkout.is_dir():
        return checkout
    installed = Path(__file__).resolve().parent / "templates"
    return installed
