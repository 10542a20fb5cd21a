"""The base of every full-clone node: identity, admins, SSH hardening, firewall, time,
unattended security updates (reboots left to clonefleet), disk health tools.

Usable from clonefleet and from the plain CLI: `pyinfra inventory/lab.py deploys/node.py`.
Host data (with defaults below): `clonefleet_hostname`, `clonefleet_fqdn`,
`clonefleet_admins` ([{name, keys}]), `clonefleet_tcp_ports`, `clonefleet_udp_ports`,
`clonefleet_offline` (True for a root filesystem in a chroot, with no running systemd: files
are written and units enabled, nothing is started, reloaded or asked about its running state,
and no command that needs the running system, such as `nft -f` or `hostname`, runs; every
deploy of a full-clone node honours it).
Firewall (`firewall_variables`): `clonefleet_tcp_ports`, `clonefleet_public_tcp_ports` and
`clonefleet_udp_ports` are open to all, and so is the mesh's WireGuard port (`mesh_port`);
`clonefleet_backend_tcp_ports` only on the mesh interface (`mesh_interface`) and from
`clonefleet_controller_addresses` (addresses or networks). A port both public and backend is
public.
`clonefleet_unlock_keys`: the keys Dropbear in the initramfs lets run cryptroot-unlock (the
operator's and every granted unlocker's, `clonefleet keys grant`; set once a fleet granted
one); the file is rewritten and the initramfs rebuilt only when they changed. Empty (the
default, and a fleet that never granted an unlocker): the file is left as the install wrote
it.
Every package is already in the node image, so a run never needs the network; a second run
reports no changes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server

from deploys._paths import template
from deploys._systemd import offline, unit

PACKAGES = ["openssh-server", "nftables", "chrony", "unattended-upgrades", "smartmontools",
            "sudo", "needrestart"]

FIREWALL_KEYS = ("clonefleet_tcp_ports", "clonefleet_udp_ports", "clonefleet_public_tcp_ports",
                 "clonefleet_backend_tcp_ports", "clonefleet_controller_addresses",
                 "mesh_interface", "mesh_port")


def firewall_variables(data: Mapping[str, Any]) -> dict[str, Any]:
    """The variables of `templates/base/nftables.conf.j2` for one node's host data."""
    public = set(data.get("clonefleet_tcp_ports") or []) | {22}
    public |= set(data.get("clonefleet_public_tcp_ports") or [])
    udp = set(data.get("clonefleet_udp_ports") or [])
    if data.get("mesh_port"):
        udp.add(int(data["mesh_port"]))
    controllers = [ipaddress.ip_network(value, strict=False)
                   for value in data.get("clonefleet_controller_addresses") or []]
    return {
        "tcp_ports": sorted(public),
        "udp_ports": sorted(udp),
        "backend_tcp_ports": sorted(set(data.get("clonefleet_backend_tcp_ports") or [])
                                    - public),
        "mesh_interface": data.get("mesh_interface") or "",
        "controller_ipv4": [str(net) for net in controllers if net.version == 4],
        "controller_ipv6": [str(net) for net in controllers if net.version == 6],
    }


def dropbear_unlock_keys() -> None:
    """Dropbear's initramfs authorized_keys from `clonefleet_unlock_keys` (left alone when
    empty), and the initramfs rebuilt when they changed (not offline)."""
    unlock_keys = list(host.data.get("clonefleet_unlock_keys") or [])
    if unlock_keys:
        from clonefleet.image.node import REBUILD_INITRAMFS, initramfs_authorized_keys

        dropbear = files.put(name="Dropbear (initramfs): the keys that may unlock",
                             src=StringIO(initramfs_authorized_keys(unlock_keys)),
                             dest="/etc/dropbear/initramfs/authorized_keys", mode="600")
        if not offline():
            # The initramfs holds its own copy; the next boot's Dropbear reads that one.
            server.shell(name="initramfs rebuilt with the unlock keys",
                         commands=[REBUILD_INITRAMFS], _if=dropbear.did_change)


@deploy("clonefleet base", data_defaults={
    "clonefleet_hostname": "",
    "clonefleet_fqdn": "",
    "clonefleet_admins": [],
    "clonefleet_tcp_ports": [22],
    "clonefleet_udp_ports": [],
    "clonefleet_public_tcp_ports": [],
    "clonefleet_backend_tcp_ports": [],
    "clonefleet_controller_addresses": [],
    "clonefleet_offline": False,
    "clonefleet_unlock_keys": [],
})
def base() -> None:
    hostname = host.data.clonefleet_hostname or host.name
    apt.packages(name="Node packages (from the image)", packages=PACKAGES)
    if offline():
        # `hostname NAME` in a chroot would rename the machine running the chroot.
        files.put(name="Hostname", src=StringIO(f"{hostname}\n"), dest="/etc/hostname",
                  mode="644")
    else:
        server.hostname(name="Hostname", hostname=hostname)

    for admin in host.data.clonefleet_admins:
        server.user(name=f"Admin {admin['name']}", user=admin["name"], shell="/bin/bash",
                    groups=["sudo"], public_keys=list(admin["keys"]), home=f"/home/"
                    f"{admin['name']}", ensure_home=True)
    files.put(name="Admins use sudo without a password (they have no password)",
              src=template("base/sudoers-admins"), dest="/etc/sudoers.d/clonefleet-admins",
              mode="440")

    sshd = files.template(name="SSH hardening", src=template("base/sshd-hardening.conf.j2"),
                          dest="/etc/ssh/sshd_config.d/50-clonefleet.conf", mode="644")
    unit("sshd reload", "ssh.service", reloaded=True, condition=sshd.did_change)

    firewall = files.template(name="nftables ruleset", src=template("base/nftables.conf.j2"),
                              dest="/etc/nftables.conf", mode="755",
                              **firewall_variables({key: host.data.get(key)
                                                    for key in FIREWALL_KEYS}))
    unit("nftables enabled", "nftables.service")
    if not offline():
        server.shell(name="nftables reload", commands=["nft -f /etc/nftables.conf"],
                     _if=firewall.did_change)

    unit("chrony running", "chrony.service")

    dropbear_unlock_keys()

    files.put(name="Unattended security upgrades, no automatic reboot",
              src=template("base/52clonefleet-unattended-upgrades"),
              dest="/etc/apt/apt.conf.d/52clonefleet-unattended-upgrades", mode="644")
    files.put(name="Periodic apt: update, download, upgrade",
              src=template("base/20auto-upgrades"),
              dest="/etc/apt/apt.conf.d/20auto-upgrades", mode="644")
    files.directory(name="smartmontools textfile folder", path="/var/lib/clonefleet",
                    mode="755")
