"""The drivers clonefleet knows, what each accepts in the fleet file, and how to load one.

A driver module is imported only when a command needs it (`hcloud` and `ovh` cost import
time). Each driver module exposes `create(config, state_dir, log) -> Provider`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clonefleet.errors import ConfigError
from clonefleet.providers.base import Provider, ProviderConfig


@dataclass(frozen=True)
class Setting:
    """One key a driver accepts in `[providers.NAME]` or in a node's table."""

    kind: type | tuple[type, ...]
    help: str
    default: Any = None
    required: bool = False
    # The value names an environment variable holding a secret; the secret itself never
    # appears in the fleet file.
    env_var: bool = False


@dataclass(frozen=True)
class Driver:
    name: str
    module: str  # imported lazily; exposes create(config, state_dir, log)
    summary: str
    settings: Mapping[str, Setting] = field(default_factory=dict)
    node_keys: Mapping[str, Setting] = field(default_factory=dict)

    def create(self, config: ProviderConfig, state_dir: Path,
               log: Callable[[str], None]) -> Provider:
        module = importlib.import_module(self.module)
        provider: Provider = module.create(config, state_dir, log)
        return provider


COMMON_SETTINGS: Mapping[str, Setting] = {
    "driver": Setting(str, "which driver serves this provider (defaults to the table's name)"),
}

DRIVERS: dict[str, Driver] = {
    "lab": Driver("lab", "clonefleet.providers.lab",
                  "qemu VMs on this machine stand in for bare servers"),
}


def register(driver: Driver) -> None:
    DRIVERS[driver.name] = driver


def driver(name: str) -> Driver:
    try:
        return DRIVERS[name]
    except KeyError:
        raise ConfigError(f"unknown provider driver {name!r}; use one of: "
                          f"{', '.join(sorted(DRIVERS))}") from None
