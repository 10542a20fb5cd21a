"""What the state store records about a node, with a type, and each fact's key named once.

Provisioning records the facts as it learns them: the server's addresses when it is created,
both host keys and the disk layout when the node layer is built (before the node ever boots
them), the disks' by-id paths once the rescue system has shown them. Unlock, the health check,
`clonefleet disks` and the pyinfra inventory read them through `load`, never by key.

The stored values are the JSON that clonefleet has always written (`{"host", "port"}` objects,
OpenSSH public key lines with their comment, the layout's fields), so existing state databases
keep working; `load` also takes what older writers left (a port as a string, a layout without
the fields added since). A malformed fact is a `StateError` naming the node and the key.

Pinned host keys reach SSH clients only through the fleet's known_hosts file
(`clonefleet.known_hosts`): `load_pinned` writes the node's entries there from these facts
before a connection, so the store stays the one record and the file never lags behind it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from clonefleet.errors import StateError
from clonefleet.image.node import NodeLayout
from clonefleet.known_hosts import HostKeyEntry, KnownHosts, public_key_blob
from clonefleet.providers.base import ServerInfo, SshAccess
from clonefleet.state import StateStore

if TYPE_CHECKING:
    from clonefleet.ssh import RemoteShell

# Fact keys, as stored (the names older versions used: do not rename without migrating).
SSH_ACCESS = "ssh"  # {"host", "port"}: the rescue system, later sshd
UNLOCK_ACCESS = "unlock"  # {"host", "port"}: Dropbear in the initramfs
SERVER_ID = "server_id"  # the provider's id for the server
NIC_MODULES = "nic_modules"  # kernel modules the initramfs needs for the network
SSH_HOST_KEY = "ssh_host_key"  # sshd's public key line, pinned at install
DROPBEAR_HOST_KEY = "dropbear_host_key"  # Dropbear's public key line, pinned at install
LAYOUT = "layout"  # NodeLayout's fields: UUIDs chosen before the install
DISKS = "disks"  # {serial: /dev/disk/by-id/...}
# {"tcp/8081": ["127.0.0.1", 40123]}: the node's services behind a provider's port forwards
FORWARDED_PORTS = "forwarded_ports"
PRIVATE_ADDRESS = "private_address"  # "10.99.0.11/24" on the fleet's private network

# Roles of pinned keys in known_hosts: which system of the node answers at an address.
SSHD = "sshd"
DROPBEAR = "dropbear"


@dataclass(frozen=True)
class NodeFacts:
    """Everything recorded about one node; a fact never recorded is None (or empty)."""

    node: str
    ssh: SshAccess | None = None
    unlock: SshAccess | None = None
    server_id: str = ""
    nic_modules: tuple[str, ...] = ()
    ssh_host_key: str | None = None
    dropbear_host_key: str | None = None
    layout: NodeLayout | None = None
    disks: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    forwarded_ports: Mapping[str, tuple[str, int]] = field(
        default_factory=lambda: MappingProxyType({}))
    private_address: str = ""

    @property
    def private_ip(self) -> str:
        """The address on the fleet's private network without its prefix length, or ""."""
        return self.private_address.split("/")[0]

    def require_ssh(self) -> SshAccess:
        return _required(self.node, "ssh", self.ssh)

    def require_unlock(self) -> SshAccess:
        return _required(self.node, "unlock", self.unlock)

    def host_key_entries(self) -> list[HostKeyEntry]:
        """The node's pinned keys where they answer: sshd, then Dropbear."""
        entries = []
        for role, access, key in ((SSHD, self.ssh, self.ssh_host_key),
                                  (DROPBEAR, self.unlock, self.dropbear_host_key)):
            if access is not None and key:
                entries.append(HostKeyEntry(self.node, role, access.host, access.port,
                                            public_key_blob(key)))
        return entries


def _required(node: str, kind: str, access: SshAccess | None) -> SshAccess:
    if access is None:
        raise StateError(f"no recorded {kind} address for node {node}; provision it first")
    return access


def load(store: StateStore, node: str) -> NodeFacts:
    """Given a node, return what the store records about it (all of it, in one read)."""
    facts = store.facts(node)
    return NodeFacts(
        node=node,
        ssh=_access(node, SSH_ACCESS, facts.get(SSH_ACCESS)),
        unlock=_access(node, UNLOCK_ACCESS, facts.get(UNLOCK_ACCESS)),
        server_id=str(facts.get(SERVER_ID) or ""),
        nic_modules=tuple(str(module) for module in _list(node, NIC_MODULES,
                                                          facts.get(NIC_MODULES))),
        ssh_host_key=_key(node, SSH_HOST_KEY, facts.get(SSH_HOST_KEY)),
        dropbear_host_key=_key(node, DROPBEAR_HOST_KEY, facts.get(DROPBEAR_HOST_KEY)),
        layout=_layout(node, facts.get(LAYOUT)),
        disks=MappingProxyType({str(serial): str(path) for serial, path
                                in _mapping(node, DISKS, facts.get(DISKS)).items()}),
        forwarded_ports=MappingProxyType(_forwards(node, facts.get(FORWARDED_PORTS))),
        private_address=str(facts.get(PRIVATE_ADDRESS) or ""),
    )


def load_pinned(store: StateStore, node: str, known_hosts: KnownHosts,
                loopback_as: str = "") -> NodeFacts:
    """The node's facts, after writing its pinned host keys to the fleet's known_hosts:
    call this before connecting to the node, and connect with that file. `loopback_as`:
    see `seen_from`."""
    return load_pinned_many(store, [node], known_hosts, loopback_as)[node]


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def seen_from(facts: NodeFacts, loopback_as: str) -> NodeFacts:
    """The node's SSH and Dropbear addresses as another machine reaches them: an address on
    the controller's loopback (a lab VM's forwarded port) is `loopback_as` there (qemu's
    10.0.2.2, from another lab VM). Unchanged when `loopback_as` is empty."""
    if not loopback_as:
        return facts

    def moved(access: SshAccess | None) -> SshAccess | None:
        if access is None or access.host not in LOOPBACK_HOSTS:
            return access
        return dataclasses.replace(access, host=loopback_as)

    return dataclasses.replace(facts, ssh=moved(facts.ssh), unlock=moved(facts.unlock))


def sshd_shell(facts: NodeFacts, known_hosts: KnownHosts, key_path: Path,
               timeout: float = 20) -> RemoteShell:
    """A login to the node's sshd with `key_path`, its host key checked against the pin in
    `known_hosts` (`facts` from `load_pinned`, which wrote it). The caller closes it."""
    from clonefleet.ssh import RemoteShell

    return RemoteShell(facts.require_ssh(), key_path, known_hosts=known_hosts.path,
                       what=f"node {facts.node}", timeout=timeout)


def load_pinned_many(store: StateStore, nodes: Iterable[str],
                     known_hosts: KnownHosts, loopback_as: str = "") -> dict[str, NodeFacts]:
    """`load_pinned` for several nodes, in one write of known_hosts. A node without pinned
    keys loses any entries it had (a retired node's, say), so nothing stale is trusted."""
    facts = {node: seen_from(load(store, node), loopback_as) for node in nodes}
    known_hosts.replace_nodes({node: value.host_key_entries() for node, value in facts.items()})
    return facts


def record_server(store: StateStore, node: str, info: ServerInfo) -> None:
    """Where the new (or adopted) server answers, and what its initramfs needs."""
    with store.transaction():
        store.set_fact(node, SSH_ACCESS, _access_value(info.ssh))
        store.set_fact(node, UNLOCK_ACCESS, _access_value(info.unlock))
        store.set_fact(node, SERVER_ID, info.server_id)
        store.set_fact(node, NIC_MODULES, list(info.nic_modules))
        store.set_fact(node, FORWARDED_PORTS, {guest: [host, port] for guest, (host, port)
                                               in info.forwarded_ports.items()})


def record_private_address(store: StateStore, node: str, address: str) -> None:
    """The node's address on the fleet's private network ("" for none)."""
    store.set_fact(node, PRIVATE_ADDRESS, address)


def record_host_keys(store: StateStore, node: str, *, ssh_host_key: str,
                     dropbear_host_key: str) -> None:
    """Pin both host keys (public key lines) of a node about to be installed."""
    with store.transaction():
        store.set_fact(node, SSH_HOST_KEY, ssh_host_key)
        store.set_fact(node, DROPBEAR_HOST_KEY, dropbear_host_key)


def replace_host_keys(store: StateStore, node: str, known_hosts: KnownHosts,
                      keys: Mapping[str, str]) -> NodeFacts:
    """Re-pin some of a node's host keys (`{"sshd" | "dropbear": public key line}`) in one
    store transaction, then rewrite the node's known_hosts entries from the store (one
    locked rename): the store stays the record, the file its projection."""
    facts_keys = {SSHD: SSH_HOST_KEY, DROPBEAR: DROPBEAR_HOST_KEY}
    unknown = sorted(set(keys) - set(facts_keys))
    if unknown:
        raise ValueError(f"unknown host key roles: {', '.join(unknown)}")
    with store.transaction():
        for role, line in keys.items():
            store.set_fact(node, facts_keys[role], line)
    return load_pinned(store, node, known_hosts)


def record_layout(store: StateStore, node: str, layout: NodeLayout) -> None:
    store.set_fact(node, LAYOUT, dataclasses.asdict(layout))


def record_disks(store: StateStore, node: str, disk_paths: Mapping[str, str]) -> None:
    store.set_fact(node, DISKS, dict(disk_paths))


def _access_value(access: SshAccess) -> dict[str, Any]:
    # The user is always root and the provider's rescue fingerprints are not a pin: neither
    # is stored, as before.
    return {"host": access.host, "port": access.port}


def _malformed(node: str, key: str, value: object, expected: str) -> StateError:
    return StateError(f"node {node}: fact {key!r} is {value!r}, not {expected}; provision the "
                      "node again (or fix the fact) before using it")


def _access(node: str, key: str, value: object) -> SshAccess | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value.get("host"):
        raise _malformed(node, key, value, "an object with host and port")
    try:
        port = int(value.get("port", 22))  # older writers may have left the port a string
    except (TypeError, ValueError):
        raise _malformed(node, key, value, "an object with a numeric port") from None
    if not 0 < port < 65536:
        raise _malformed(node, key, value, "an object with a port from 1 to 65535")
    return SshAccess(str(value["host"]), port)


def _key(node: str, key: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value.split()) < 2:
        raise _malformed(node, key, value, "an OpenSSH public key line")
    return value.strip()


def _list(node: str, key: str, value: object) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise _malformed(node, key, value, "a list")
    return list(value)


def _mapping(node: str, key: str, value: object) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _malformed(node, key, value, "an object")
    return value


def _forwards(node: str, value: object) -> dict[str, tuple[str, int]]:
    result = {}
    for guest, target in _mapping(node, FORWARDED_PORTS, value).items():
        if (not isinstance(target, list | tuple) or len(target) != 2
                or not isinstance(target[0], str) or not str(target[1]).isdigit()):
            raise _malformed(node, FORWARDED_PORTS, value, '{"tcp/8081": ["host", port]}')
        result[str(guest)] = (target[0], int(target[1]))
    return result


def _layout(node: str, value: object) -> NodeLayout | None:
    if value is None:
        return None
    data = _mapping(node, LAYOUT, value)
    known = {item.name for item in dataclasses.fields(NodeLayout)}
    # Fields added to the layout since a node was installed keep their defaults; keys a
    # later version may add are ignored by this one.
    arguments = {name: data[name] for name in known if name in data}
    if "esp_volume_ids" in arguments:
        arguments["esp_volume_ids"] = tuple(arguments["esp_volume_ids"])
    try:
        return NodeLayout(**arguments)
    except TypeError:
        missing = sorted(item.name for item in dataclasses.fields(NodeLayout)
                         if item.default is dataclasses.MISSING and item.name not in data)
        raise _malformed(node, LAYOUT, value, f"a layout (missing {', '.join(missing)})") \
            from None
