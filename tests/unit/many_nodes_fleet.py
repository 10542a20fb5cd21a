"""A fleet for provisioning several nodes without any VM: lab nodes recorded as deployed
(provision has nothing to do) and Hetzner Cloud nodes that fail at their first step for a
real reason (the token variable is unset, or a local API fake refuses the token)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from fleet_text import FSN, HEL, FleetNode, FleetRegion, fleet_toml

from clonefleet.state import SqliteStateStore, open_store

ROOT = Path(__file__).resolve().parents[2]
FLEET_NAME = "many"
UNSET_TOKEN = "CF_MANY_TEST_UNSET_TOKEN"
WRONG_TOKEN = "CF_MANY_TEST_WRONG_TOKEN"

LAB_NODES = ("fsn-1", "fsn-2", "fsn-3")
CLOUD_NODES = ("hel-1", "hel-2")


def fleet_text(cloud_settings: str = "", refusing_api: str = "") -> str:
    """Lab nodes fsn-1 to fsn-3; hel-1 and hel-2 on Hetzner Cloud, whose token variable is
    unset, with `cloud_settings` as more lines of that provider's table; with `refusing_api`,
    nbg-1 on a provider whose API (a local fake at that URL) refuses the token it is given."""
    regions = [FSN, replace(HEL, provider="cloud")]
    nodes = [FleetNode("fsn-1", "fsn", "S-FSN1"), FleetNode("fsn-2", "fsn", "S-FSN2"),
             FleetNode("fsn-3", "fsn", "S-FSN3"),
             FleetNode("hel-1", "hel", "S-HEL1", ipv4="203.0.113.41"),
             FleetNode("hel-2", "hel", "S-HEL2", ipv4="203.0.113.42")]
    # The providers' tables follow the nodes (TOML tables may come in any order).
    providers = f"""
[providers.cloud]
driver = "hetzner-cloud"
token_env = "{UNSET_TOKEN}"
{cloud_settings}
"""
    if refusing_api:
        regions.append(FleetRegion("nbg", 49.45, 11.08, provider="refusing"))
        nodes.append(FleetNode("nbg-1", "nbg", "S-NBG1", ipv4="203.0.113.51"))
        providers += f"""
[providers.refusing]
driver = "hetzner-cloud"
api_url = "{refusing_api}"
token_env = "{WRONG_TOKEN}"
"""
    return fleet_toml(FLEET_NAME, "many.clonefleet.test", regions, nodes) + providers


def write_fleet(folder: Path, *, cloud_settings: str = "", refusing_api: str = "") -> Path:
    """The fleet file, its lab nodes recorded as deployed in the state under `folder`."""
    path = folder / "fleet.toml"
    path.write_text(fleet_text(cloud_settings, refusing_api))
    store = state_store(folder)
    for node in LAB_NODES:
        if store.get(node) is None:
            store.set_state(node, "deployed", actor="test", reason="provisioned earlier")
    return path


def state_store(folder: Path) -> SqliteStateStore:
    return open_store(folder / "state" / FLEET_NAME)


def environment(folder: Path) -> dict[str, str]:
    """Everything the command writes stays under `folder`; the cloud token stays unset."""
    env = {key: value for key, value in os.environ.items()
           if key not in (UNSET_TOKEN, "CLONEFLEET_FLEET")}
    env.update(CLONEFLEET_STATE_DIR=str(folder / "state"),
               CLONEFLEET_AGE_KEY=str(folder / "age.key"),
               CLONEFLEET_CACHE_DIR=str(folder / "cache"), **{WRONG_TOKEN: "not-the-token"})
    return env


def clonefleet(folder: Path, fleet: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess, output not on a terminal."""
    return subprocess.run([sys.executable, "-m", "clonefleet", "--fleet", str(fleet), *args],
                          env=environment(folder), capture_output=True, text=True,
                          timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL)
