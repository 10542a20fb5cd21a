"""The fleet as a pyinfra inventory: used by clonefleet and by `inventory/<fleet>.py`.

Only nodes whose sshd address is known (recorded at install) are listed. Every host gets the
fleet's known_hosts file (the one clonefleet's own SSH sessions check against, refreshed here
from the pinned keys in the state store) and strict checking, so pyinfra refuses a changed or
unpinned key exactly like `clonefleet unlock` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clonefleet import nodefacts
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.known_hosts import fleet_known_hosts
from clonefleet.paths import fleet_state_dir
from clonefleet.retry import DEFAULT, DEPLOY_CONNECT_TRIES
from clonefleet.secrets import open_secrets
from clonefleet.services import ServiceContext, merge_host_data, service_host_data
from clonefleet.services.controller import controller_networks
from clonefleet.ssh import ensure_operator_key
from clonefleet.state import StateStore, open_store
from clonefleet.unlockers import initramfs_keys


def host_data(fleet: Fleet, store: StateStore, state_dir: Path,
              names: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    key = ensure_operator_key(fleet.ssh_key, state_dir)
    known_hosts = fleet_known_hosts(state_dir)
    wanted = sorted(fleet.nodes) if names is None else [fleet.node(name).name for name in names]
    # Only the nodes asked for: another node's damaged facts must not stop this deploy. One
    # rewrite for all of them; a node without recorded keys loses any entries it had.
    facts = nodefacts.load_pinned_many(store, wanted, known_hosts)
    secrets = open_secrets(state_dir)
    unlock_keys = initramfs_keys(store, key.public_line)
    hosts = []
    for name in wanted:
        node = fleet.node(name)
        access = facts[name].ssh
        if access is None:
            continue
        hosts.append((name, merge_host_data({
            "ssh_hostname": access.host,
            "ssh_port": access.port,
            "ssh_user": "root",
            "ssh_key": str(key.path),
            "ssh_known_hosts_file": str(known_hosts.path),
            "ssh_strict_host_key_checking": "yes",
            # The shared retry policy, in pyinfra's terms: it retries refused, reset and EOF
            # connects, never a changed host key (that is a ConnectError at once).
            "ssh_connect_retries": DEPLOY_CONNECT_TRIES,
            "ssh_connect_retry_min_delay": DEFAULT.first,
            "ssh_connect_retry_max_delay": DEFAULT.cap,
            "clonefleet_hostname": node.name,
            "clonefleet_fqdn": f"{node.name}.{fleet.domain}",
            "clonefleet_region": node.region,
            "clonefleet_admins": [{"name": admin.name, "keys": list(admin.keys)}
                                  for admin in fleet.admins],
            "clonefleet_tcp_ports": list(fleet.allowed_tcp_ports),
            "clonefleet_udp_ports": list(fleet.allowed_udp_ports),
            # Who may reach backend ports (the firewall, PowerDNS's API): one list for all.
            "clonefleet_controller_addresses": controller_networks(fleet, node),
            "smartwatch_node": node.name,
            "smartwatch_drain_url": fleet.control_url,
            "smartwatch_alert_urls": list(fleet.alert_urls),
            # The same keys, in the same order, as the node layer wrote at install: a node
            # provisioned after the last grant or revoke sees no change.
            "clonefleet_unlock_keys": unlock_keys,
        }, service_host_data(ServiceContext(fleet, node, store, secrets)))))
    return hosts


def hosts_for(fleet_path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """For `inventory/<fleet>.py`: the fleet's reachable nodes as pyinfra hosts."""
    fleet = load_fleet(fleet_path)
    state_dir = fleet_state_dir(fleet.name)
    return host_data(fleet, open_store(state_dir, fleet.state), state_dir)
