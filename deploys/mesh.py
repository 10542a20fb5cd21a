"""The mesh: a WireGuard interface (wg-quick) joining this node to every other node.

Host data (from `clonefleet.services.mesh`): `mesh_interface`, `mesh_port`, `mesh_cidr`,
`mesh_address` (this node's, allocated once by the control plane), `mesh_private_key` (a
per-node secret), `mesh_peers` ([{name, public_key, address, endpoint}]), `mesh_keepalive`.
The config is written root-only to `/etc/wireguard/<interface>.conf`; peer changes are applied
with `wg syncconf`, which keeps established sessions. With `clonefleet_offline` (a root
filesystem without a running system): files and the enabled unit only.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import apt, files, server, systemd

from deploys._paths import template
from deploys._systemd import offline as is_offline

PACKAGES = ["wireguard-tools"]
DEFAULTS: dict[str, Any] = {
    "mesh_interface": "wg0",
    "mesh_port": 51820,
    "mesh_cidr": "10.77.0.0/24",
    "mesh_address": "",
    "mesh_private_key": "",
    "mesh_peers": [],
    "mesh_keepalive": 25,
}


def config_path(data: Mapping[str, Any]) -> str:
    return f"/etc/wireguard/{data['mesh_interface']}.conf"


def unit(data: Mapping[str, Any]) -> str:
    return f"wg-quick@{data['mesh_interface']}.service"


def wireguard_variables(data: Mapping[str, Any]) -> dict[str, Any]:
    """The variables of `templates/mesh/wg0.conf.j2` for one node's host data."""
    for key in ("mesh_address", "mesh_private_key"):
        if not data.get(key):
            raise DeployError(f"mesh: host data {key} is empty; deploy through clonefleet or "
                              "inventory/<fleet>.py, which allocate it")
    network = ipaddress.ip_network(data["mesh_cidr"])
    return {
        "address": data["mesh_address"],
        "prefix": network.prefixlen,
        "peer_prefix": network.max_prefixlen,  # each peer routes its own address only
        "port": data["mesh_port"],
        "private_key": data["mesh_private_key"],
        "peers": list(data["mesh_peers"]),
        "keepalive": data["mesh_keepalive"],
    }


def apply_peers_command(interface: str, config: str | None = None) -> str:
    """Make a running interface's keys and peers what its config says, keeping the sessions
    of unchanged peers (`wg syncconf`; `wg-quick strip` drops what only wg-quick reads)."""
    source = shlex.quote(config or interface)
    return f"bash -c {shlex.quote(f'wg syncconf {interface} <(wg-quick strip {source})')}"


@deploy("clonefleet mesh", data_defaults=DEFAULTS)
def mesh() -> None:
    data = {key: host.data.get(key) for key in DEFAULTS}
    offline = is_offline()
    apt.packages(name="WireGuard tools (from the image)", packages=PACKAGES)
    files.directory(name="WireGuard folder", path="/etc/wireguard", mode="700")
    config = files.template(name="WireGuard mesh config", src=template("mesh/wg0.conf.j2"),
                            dest=config_path(data), mode="600", user="root", group="root",
                            **wireguard_variables(data))
    if offline:
        # What `systemctl enable` does for the template unit (WantedBy=multi-user.target).
        files.link(name="WireGuard mesh enabled at boot",
                   path=f"/etc/systemd/system/multi-user.target.wants/{unit(data)}",
                   target="/lib/systemd/system/wg-quick@.service")
        return
    systemd.service(name="WireGuard mesh up", service=unit(data), running=True, enabled=True)
    interface = data["mesh_interface"]
    # syncconf changes peers and keys in place; a running interface keeps its sessions.
    server.shell(name="WireGuard mesh peers applied", commands=[apply_peers_command(interface)],
                 _if=config.did_change)
