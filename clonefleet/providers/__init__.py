"""Provider drivers behind one small protocol; quirks stay inside each driver module."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from clonefleet.providers.base import (
    SERVER_STATUSES,
    InitramfsNetwork,
    Provider,
    ProviderConfig,
    ServerInfo,
    ServerStatus,
    SshAccess,
)
from clonefleet.providers.registry import credential, driver

if TYPE_CHECKING:
    from clonefleet.inventory.model import Fleet, Node

__all__ = ["SERVER_STATUSES", "InitramfsNetwork", "Provider", "ProviderConfig", "ServerInfo",
           "ServerStatus", "SshAccess", "credential", "get_provider", "provider_for"]


def get_provider(config: ProviderConfig | str, fleet_state_dir: Path,
                 log: Callable[[str], None] = print) -> Provider:
    """Return the driver instance for `config` (a provider name means its defaults)."""
    if isinstance(config, str):
        config = ProviderConfig(name=config, driver=config)
    return driver(config.driver).create(config, fleet_state_dir, log)


def provider_for(fleet: Fleet, node: Node, fleet_state_dir: Path,
                 log: Callable[[str], None] = print) -> Provider:
    """The driver instance serving `node`: its provider's `[providers.NAME]` table (or the
    driver's defaults), with lab routes read from this state folder."""
    config = fleet.providers.get(node.provider) or ProviderConfig(name=node.provider,
                                                                  driver=node.provider,
                                                                  fleet_path=fleet.path)
    if config.settings.get("lab_routes"):
        from clonefleet.providers.routes import LabRoutes, routes_path

        routes = LabRoutes(routes_path(fleet_state_dir))
        config = dataclasses.replace(config, route=routes, forwards=routes.forwards)
    return get_provider(config, fleet_state_dir, log)
