"""Provider drivers behind one small protocol; quirks stay inside each driver module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clonefleet.providers.base import (
    SERVER_STATUSES,
    InitramfsNetwork,
    Provider,
    ProviderConfig,
    ServerInfo,
    ServerStatus,
    SshAccess,
)
from clonefleet.providers.registry import driver

__all__ = ["SERVER_STATUSES", "InitramfsNetwork", "Provider", "ProviderConfig", "ServerInfo",
           "ServerStatus", "SshAccess", "get_provider"]


def get_provider(config: ProviderConfig | str, fleet_state_dir: Path,
                 log: Callable[[str], None] = print) -> Provider:
    """Return the driver instance for `config` (a provider name means its defaults)."""
    if isinstance(config, str):
        config = ProviderConfig(name=config, driver=config)
    return driver(config.driver).create(config, fleet_state_dir, log)
