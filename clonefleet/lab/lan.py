"""The lab fleet's LAN: one Ethernet segment joining its VMs, on a multicast socket over
loopback, with a fixed private address per VM.

Real fleets have a provider's private network (Hetzner vSwitch or Cloud network, OVH vRack)
beside the public one, and the mesh and database replication run between nodes. Lab VMs get
the same: qemu's user network (eth0) reaches the controller and the Debian mirror but never
another VM, so each VM gets a second NIC (eth1) on this segment. Its addresses exist only
inside the guests; the controller never sends to them.

The group, port and addresses are allocated once per fleet state folder and kept in
`<state>/lab/lan.json`, so a VM keeps its address across restarts and re-provisioning, and
two fleets (parallel tests) never share a segment.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from clonefleet.image.base import cache_lock
from clonefleet.lab.qemu import free_port

NETWORK = ipaddress.ip_network("10.99.0.0/24")
FIRST_HOST = 11  # .1-.10 left for whatever plays a router or a controller on the LAN


@dataclass(frozen=True)
class LanSeat:
    group: str
    port: int
    address: str  # with its prefix length: "10.99.0.11/24"
    mac: str

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


def seat(root: Path, node: str) -> LanSeat:
    """The node's place on the fleet's LAN under `root` (the lab folder), allocated on first
    use and the same ever after; safe when several nodes are created at once."""
    path = root / "lan.json"
    with cache_lock(root / ".lan.lock"):
        data = json.loads(path.read_text()) if path.exists() else {}
        if not data:
            digest = hashlib.sha256(str(root.resolve()).encode()).digest()
            # 239.0.0.0/8 is administratively scoped (RFC 2365): never routed anywhere.
            data = {"group": f"239.77.{digest[0]}.{max(digest[1], 1)}", "port": free_port(),
                    "addresses": {}}
        addresses: dict[str, str] = data["addresses"]
        if node not in addresses:
            taken = {ipaddress.ip_address(address) for address in addresses.values()}
            free = next(host for index, host in enumerate(NETWORK.hosts(), start=1)
                        if index >= FIRST_HOST and host not in taken)
            addresses[node] = str(free)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(data, indent=2))
            temporary.replace(path)
    address = ipaddress.ip_address(addresses[node])
    host_byte = int(address) & 0xFF
    return LanSeat(group=data["group"], port=int(data["port"]),
                   address=f"{address}/{NETWORK.prefixlen}",
                   mac=f"52:54:00:99:00:{host_byte:02x}")


def release(root: Path, node: str) -> None:
    """Forget a deleted VM's address, so a new node may get it."""
    path = root / "lan.json"
    with cache_lock(root / ".lan.lock"):
        if not path.exists():
            return
        data = json.loads(path.read_text())
        if data["addresses"].pop(node, None) is not None:
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(data, indent=2))
            temporary.replace(path)
