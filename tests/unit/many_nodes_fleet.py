"""A fleet for provisioning several nodes without any VM: lab nodes recorded as deployed
(provision has nothing to do) and Hetzner Cloud nodes that fail at their first step for a
real reason (the token variable is unset, or a local API fake refuses the token)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from clonefleet.state import SqliteStateStore, open_store

ROOT = Path(__file__).resolve().parents[2]
FLEET_NAME = "many"
UNSET_TOKEN = "CF_MANY_TEST_UNSET_TOKEN"
WRONG_TOKEN = "CF_MANY_TEST_WRONG_TOKEN"

FLEET = f"""
[fleet]
name = "{FLEET_NAME}"
domain = "many.clonefleet.test"

[providers.cloud]
driver = "hetzner-cloud"
token_env = "{UNSET_TOKEN}"
{{cloud_settings}}

[regions.fsn]
provider = "lab"
latitude = 50.47
longitude = 12.37

[regions.hel]
provider = "cloud"
latitude = 60.17
longitude = 24.94

[nodes.fsn-1]
region = "fsn"
disks = ["S-FSN1"]

[nodes.fsn-2]
region = "fsn"
disks = ["S-FSN2"]

[nodes.fsn-3]
region = "fsn"
disks = ["S-FSN3"]

[nodes.hel-1]
region = "hel"
disks = ["S-HEL1"]
ipv4 = "203.0.113.41"

[nodes.hel-2]
region = "hel"
disks = ["S-HEL2"]
ipv4 = "203.0.113.42"
"""

# A provider whose API answers (a local fake) but refuses the token it is given.
REFUSING = f"""
[providers.refusing]
driver = "hetzner-cloud"
api_url = "{{api_url}}"
token_env = "{WRONG_TOKEN}"

[regions.nbg]
provider = "refusing"
latitude = 49.45
longitude = 11.08

[nodes.nbg-1]
region = "nbg"
disks = ["S-NBG1"]
ipv4 = "203.0.113.51"
"""

LAB_NODES = ("fsn-1", "fsn-2", "fsn-3")
CLOUD_NODES = ("hel-1", "hel-2")


def write_fleet(folder: Path, *, cloud_settings: str = "", refusing_api: str = "") -> Path:
    """The fleet file, its lab nodes recorded as deployed in the state under `folder`."""
    path = folder / "fleet.toml"
    text = FLEET.format(cloud_settings=cloud_settings)
    if refusing_api:
        text += REFUSING.format(api_url=refusing_api)
    path.write_text(text)
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
