"""The drivers clonefleet knows, what each accepts in the fleet file, and how to load one.

A driver module is imported only when a command needs it (`hcloud` and `ovh` cost import
time). Each driver module exposes `create(config, state_dir, log) -> Provider`.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clonefleet.errors import ConfigError, InventoryError
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
    # The only values accepted (a str setting); empty: any value of the right kind.
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Driver:
    name: str
    module: str  # imported lazily; exposes create(config, state_dir, log)
    summary: str
    settings: Mapping[str, Setting] = field(default_factory=dict)
    node_keys: Mapping[str, Setting] = field(default_factory=dict)
    # Where the driver's credentials come from, for the fix of a secret put in the fleet file.
    credentials: str = ""
    # How many of its servers `provision` may work on at once when the fleet file says
    # nothing (`max_parallel`): an API's rate limits, for one. None: no limit of its own.
    max_parallel: int | None = None

    def create(self, config: ProviderConfig, state_dir: Path,
               log: Callable[[str], None]) -> Provider:
        module = importlib.import_module(self.module)
        provider: Provider = module.create(config, state_dir, log)
        return provider


COMMON_SETTINGS: Mapping[str, Setting] = {
    "driver": Setting(str, "which driver serves this provider (defaults to the table's name)"),
    "lab_routes": Setting(bool, "reach the servers through <fleet state>/lab/routes.json "
                                "(lab VMs behind a local API fake)", default=False),
    "max_parallel": Setting(int, "at most this many of the provider's nodes are provisioned "
                                 "at once (besides `provision --parallel`)"),
}

DRIVERS: dict[str, Driver] = {
    "lab": Driver(
        "lab", "clonefleet.providers.lab",
        "qemu VMs on this machine stand in for bare servers",
        node_keys={
            # A real server's firmware is the box's own; a lab VM's is chosen here, so one
            # lab node proves the UEFI path (OVMF) while the others boot SeaBIOS.
            "firmware": Setting(str, "how the lab VM boots: bios (SeaBIOS) or uefi (OVMF)",
                                default="bios", choices=("bios", "uefi")),
        }),
    "hetzner-cloud": Driver(
        "hetzner-cloud", "clonefleet.providers.hetzner_cloud",
        "Hetzner Cloud servers through the hcloud library",
        settings={
            "api_url": Setting(str, "API base URL", default="https://api.hetzner.cloud/v1"),
            "token_env": Setting(str, "environment variable holding the API token",
                                 default="HCLOUD_TOKEN", env_var=True),
            "server_type": Setting(str, "default server type", default="cx22"),
            "image": Setting(str, "default image the server is created with",
                             default="debian-12"),
            "location": Setting(str, "default location", default="fsn1"),
            "ssh_key_name": Setting(str, "name of the operator's SSH key in the project "
                                         "(uploaded if absent)", default="clonefleet-{fleet}"),
        },
        node_keys={
            "server_type": Setting(str, "server type of this node"),
            "image": Setting(str, "image of this node"),
            "location": Setting(str, "location of this node (e.g. fsn1, nbg1, hel1, ash)"),
        },
        credentials="the API token comes from the variable named by token_env "
                    "(HCLOUD_TOKEN by default)"),
    "hetzner-robot": Driver(
        "hetzner-robot", "clonefleet.providers.hetzner_robot",
        "Hetzner dedicated servers through the Robot web service (adopted, never ordered)",
        settings={
            "api_url": Setting(str, "API base URL", default="https://robot-ws.your-server.de"),
            "user_env": Setting(str, "environment variable holding the Robot web service user",
                                default="HETZNER_ROBOT_USER", env_var=True),
            "password_env": Setting(str, "environment variable holding its password",
                                    default="HETZNER_ROBOT_PASSWORD", env_var=True),
            "reset_type": Setting(str, "how to reset: sw, hw, power, power_long or man",
                                  default="hw"),
        },
        node_keys={
            "robot_server": Setting((int, str), "the server's number (int) or name (str) "
                                                "in Robot"),
        },
        credentials="the Robot user and password come from the variables named by user_env "
                    "and password_env (HETZNER_ROBOT_USER, HETZNER_ROBOT_PASSWORD by default)"),
    "ovh": Driver(
        "ovh", "clonefleet.providers.ovh_dedicated",
        "OVHcloud dedicated servers through the ovh library",
        settings={
            "endpoint": Setting(str, "python-ovh endpoint name", default="ovh-eu"),
            "api_url": Setting(str, "API base URL; registered as an endpoint named after "
                                    "the provider table"),
            "config_file": Setting(str, "path to an ovh.conf holding the keys"),
        },
        node_keys={
            "service_name": Setting(str, "the server's service name, e.g. "
                                         "ns1234567.ip-203-0-113.eu"),
        },
        credentials="python-ovh reads OVH_ENDPOINT, OVH_APPLICATION_KEY, "
                    "OVH_APPLICATION_SECRET and OVH_CONSUMER_KEY from the environment or "
                    "an ovh.conf (set config_file = \"PATH\" to name one)"),
}

def register(driver: Driver) -> None:
    DRIVERS[driver.name] = driver


def driver(name: str) -> Driver:
    try:
        return DRIVERS[name]
    except KeyError:
        raise ConfigError(f"unknown provider driver {name!r}; use one of: "
                          f"{', '.join(sorted(DRIVERS))}") from None


# Variable names as shells write them. A pasted secret (mixed case, punctuation) is no name.
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def credential(config: ProviderConfig, setting: str,
               environ: Mapping[str, str] | None = None) -> str:
    """The secret held by the environment variable that `setting` of `config` names.

    Fails in one line naming the fleet file, the provider's setting, the variable and the
    fix when the variable is unset or empty. Drivers call this when they first need it.
    """
    environ = os.environ if environ is None else environ
    variable = config.settings.get(setting)
    where = str(config.fleet_path) if config.fleet_path else "fleet file"
    if not isinstance(variable, str) or not variable:
        raise InventoryError(where, f"providers.{config.name}.{setting}",
                             f"provider {config.name!r} names no environment variable",
                             f"set {setting} = \"VARIABLE\" and export that variable")
    value = environ.get(variable, "")
    if not value:
        raise InventoryError(where, f"providers.{config.name}.{setting}",
                             f"environment variable {variable} is not set (provider "
                             f"{config.name!r} reads its credential from it)",
                             f"export {variable}=... before running clonefleet, or name "
                             f"another variable in {setting}")
    return value


def missing_credentials(config: ProviderConfig,
                        environ: Mapping[str, str] | None = None) -> list[InventoryError]:
    """Every credential variable of `config` that is unset (for `clonefleet check`)."""
    errors = []
    for name, setting in DRIVERS[config.driver].settings.items():
        if setting.env_var and config.settings.get(name):
            try:
                credential(config, name, environ)
            except InventoryError as error:
                errors.append(error)
    return errors
