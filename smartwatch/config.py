"""The agent's configuration: one TOML file, defaults and validation here and nowhere else.

Example `/etc/smartwatch/smartwatch.toml`:

    node = "fsn-1"
    state_db = "/var/lib/smartwatch/state.sqlite"
    metrics_file = "/var/lib/prometheus/node-exporter/smartwatch.prom"

    [alerts]
    urls = ["mailtos://user:pass@mail.example.com?to=ops@example.com"]
    reminder_hours = 24

    [drain]
    url = "https://10.66.0.1:8441"
    token_file = "/etc/smartwatch/drain_token"

    [policy.counters.ata_197]
    critical_at = 10
"""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartwatch.policy import PolicyConfig

DEFAULT_CONFIG = "/etc/smartwatch/smartwatch.toml"


class ConfigError(Exception):
    """The config file is missing or wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class AlertConfig:
    urls: tuple[str, ...] = ()
    reminder_hours: float = 24.0
    # More notices than this in one run are folded into one summary: never a storm.
    max_per_run: int = 10
    timeout_seconds: float = 20.0


@dataclass(frozen=True)
class DrainConfig:
    url: str = ""
    token_file: str = "/etc/smartwatch/drain_token"
    ca_file: str = ""
    attempts: int = 5
    backoff_seconds: float = 2.0
    max_backoff_seconds: float = 60.0
    timeout_seconds: float = 90.0
    # A critical finding is read a second time after this pause before the node is drained.
    confirm_delay_seconds: float = 10.0
    # A drain request still undelivered this long after it was made pages the operators
    # (once): the disk is failing and the node still serves.
    undelivered_alert_minutes: float = 30.0


@dataclass(frozen=True)
class SelftestConfig:
    """Like smartd's `-s (S/../.././02|L/../../6/03)`: short daily at 02h, long Saturday 03h."""

    short_hour: int = 2
    long_weekday: int = 5  # Python's weekday(): Monday is 0, Saturday is 5
    long_hour: int = 3
    enabled: bool = True


@dataclass(frozen=True)
class Config:
    node: str = field(default_factory=socket.gethostname)
    state_db: str = "/var/lib/smartwatch/state.sqlite"
    smartctl: str = "/usr/sbin/smartctl"
    smartctl_options: tuple[str, ...] = ()
    mdstat: str = "/proc/mdstat"
    # Where the kernel lists block devices, named in the "no SMART-capable disk" finding.
    sys_block: str = "/sys/block"
    devices: tuple[str, ...] = ()
    metrics_file: str = ""
    alerts: AlertConfig = field(default_factory=AlertConfig)
    drain: DrainConfig = field(default_factory=DrainConfig)
    selftest: SelftestConfig = field(default_factory=SelftestConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def drain_token(self) -> str:
        try:
            return Path(self.drain.token_file).read_text().strip()
        except OSError:
            return ""


def _section(cls: type[Any], data: dict[str, Any], prefix: str) -> Any:
    known = set(cls.__dataclass_fields__)
    for key in data:
        if key not in known:
            raise ConfigError(f"{prefix}.{key}: unknown key; use one of: "
                              f"{', '.join(sorted(known))}")
    values = {key: tuple(value) if isinstance(value, list) else value
              for key, value in data.items()}
    return cls(**values)


def load_config(path: str | Path = DEFAULT_CONFIG) -> Config:
    """Given the config file path, return the validated `Config`; a missing file is an error."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; write it or pass --config") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    return config_from_mapping(raw, str(path))


def config_from_mapping(raw: dict[str, Any], where: str = "config") -> Config:
    sections = {"alerts": AlertConfig, "drain": DrainConfig, "selftest": SelftestConfig}
    top_known = set(Config.__dataclass_fields__)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in top_known:
            raise ConfigError(f"{where}: {key}: unknown key; use one of: "
                              f"{', '.join(sorted(top_known))}")
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            values[key] = _section(sections[key], value, f"{where}: {key}")
        elif key == "policy":
            try:
                values[key] = PolicyConfig.from_mapping(dict(value))
            except (ValueError, TypeError) as error:
                raise ConfigError(f"{where}: policy: {error}") from None
        else:
            values[key] = tuple(value) if isinstance(value, list) else value
    try:
        return Config(**values)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None
