"""Provider adapters behind one small protocol; quirks stay inside each module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clonefleet.errors import ConfigError
from clonefleet.providers.base import InitramfsNetwork, Provider, ServerInfo, SshAccess

__all__ = ["InitramfsNetwork", "Provider", "ServerInfo", "SshAccess", "get_provider"]


def get_provider(name: str, fleet_state_dir: Path,
                 log: Callable[[str], None] = print) -> Provider:
    """Return the adapter for `name`; only providers reachable from here are wired."""
    if name == "lab":
        from clonefleet.providers.lab import LabProvider

        return LabProvider(fleet_state_dir, log=log)
    raise ConfigError(f"provider {name!r} is not available in this build yet; "
                      "use provider = \"lab\" or see the provider issues")
