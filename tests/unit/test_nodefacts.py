"""Node facts through one typed accessor, on both state backends: what provisioning records
reads back the same, facts written by earlier versions still read, and pinned keys reach the
fleet's known_hosts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from etcd_fixture import Backend

from clonefleet import nodefacts
from clonefleet.errors import StateError
from clonefleet.image.node import NodeLayout
from clonefleet.known_hosts import KnownHosts
from clonefleet.providers.base import ServerInfo, SshAccess
from clonefleet.ssh import generate_ed25519
from clonefleet.state import StateStore

LAYOUT = NodeLayout(hostname="fsn-1", domain="lab.clonefleet.test", luks_uuid="l-uuid",
                    root_fs_uuid="r-uuid", boot_fs_uuid="b-uuid", raid=True,
                    md_root_uuid="m1", md_boot_uuid="m2", esp_volume_ids=("1234abcd", "5678ef01"))
DISKS = {"SERIAL-A": "/dev/disk/by-id/virtio-SERIAL-A", "SERIAL-B": "/dev/disk/by-id/virtio-B"}


@pytest.fixture
def store(backend: Backend) -> StateStore:
    return backend.open()  # SQLite, then etcd


def server(ssh_port: int = 10022, unlock_port: int = 12222) -> ServerInfo:
    return ServerInfo(node="fsn-1", server_id="lab-fsn-1", status="rescue",
                      ssh=SshAccess("127.0.0.1", ssh_port),
                      unlock=SshAccess("127.0.0.1", unlock_port),
                      nic_modules=("virtio_net", "e1000"))


def test_recorded_facts_read_back_as_they_were_recorded(store: StateStore) -> None:
    ssh_key = generate_ed25519("root@fsn-1").public_line
    dropbear_key = generate_ed25519("dropbear@fsn-1").public_line
    nodefacts.record_server(store, "fsn-1", server())
    nodefacts.record_host_keys(store, "fsn-1", ssh_host_key=ssh_key,
                               dropbear_host_key=dropbear_key)
    nodefacts.record_layout(store, "fsn-1", LAYOUT)
    nodefacts.record_disks(store, "fsn-1", DISKS)

    facts = nodefacts.load(store, "fsn-1")

    assert facts == nodefacts.NodeFacts(
        node="fsn-1", ssh=SshAccess("127.0.0.1", 10022), unlock=SshAccess("127.0.0.1", 12222),
        server_id="lab-fsn-1", nic_modules=("virtio_net", "e1000"), ssh_host_key=ssh_key,
        dropbear_host_key=dropbear_key, layout=LAYOUT, disks=facts.disks)
    assert dict(facts.disks) == DISKS
    assert facts.require_ssh() == SshAccess("127.0.0.1", 10022)
    assert facts.require_unlock() == SshAccess("127.0.0.1", 12222)


def test_the_stored_json_keeps_the_shape_earlier_versions_wrote_and_read(
        store: StateStore) -> None:
    # tests/vm and older controllers read these by key: `get_fact(node, "ssh")["port"]`.
    nodefacts.record_server(store, "fsn-1", server())
    nodefacts.record_host_keys(store, "fsn-1", ssh_host_key="ssh-ed25519 AAAA root@fsn-1",
                               dropbear_host_key="ssh-ed25519 BBBB dropbear@fsn-1")
    nodefacts.record_layout(store, "fsn-1", LAYOUT)
    nodefacts.record_disks(store, "fsn-1", DISKS)
    assert store.facts("fsn-1") == {
        "ssh": {"host": "127.0.0.1", "port": 10022},
        "unlock": {"host": "127.0.0.1", "port": 12222},
        "server_id": "lab-fsn-1",
        "nic_modules": ["virtio_net", "e1000"],
        "ssh_host_key": "ssh-ed25519 AAAA root@fsn-1",
        "dropbear_host_key": "ssh-ed25519 BBBB dropbear@fsn-1",
        "layout": dict(LAYOUT.__dict__, esp_volume_ids=["1234abcd", "5678ef01"]),
        "disks": DISKS,
        "forwarded_ports": {},
    }


def test_facts_written_by_an_earlier_version_still_read(store: StateStore) -> None:
    # As the hand-built dictionaries in provision.py left them, from a layout that predates
    # the ESP and md fields, with a port stored as a string by some older writer.
    old_layout = {name: value for name, value in LAYOUT.__dict__.items()
                  if name not in ("esp_volume_ids", "md_root_uuid", "md_boot_uuid")}
    store.set_fact("fsn-1", "ssh", {"host": "127.0.0.1", "port": "10022"})
    store.set_fact("fsn-1", "unlock", {"host": "127.0.0.1", "port": 12222})
    store.set_fact("fsn-1", "server_id", "lab-fsn-1")
    store.set_fact("fsn-1", "nic_modules", ["virtio_net"])
    store.set_fact("fsn-1", "ssh_host_key", "ssh-ed25519 AAAA root@fsn-1")
    store.set_fact("fsn-1", "dropbear_host_key", "ssh-ed25519 BBBB dropbear@fsn-1")
    store.set_fact("fsn-1", "layout", dict(old_layout, added_by_a_later_version=True))
    store.set_fact("fsn-1", "disks", DISKS)

    facts = nodefacts.load(store, "fsn-1")

    assert facts.ssh == SshAccess("127.0.0.1", 10022)
    assert facts.nic_modules == ("virtio_net",)
    assert facts.layout == dataclasses.replace(LAYOUT, esp_volume_ids=(), md_root_uuid="",
                                               md_boot_uuid="")
    assert [(entry.role, entry.port, entry.key) for entry in facts.host_key_entries()] == [
        ("sshd", 10022, "ssh-ed25519 AAAA"), ("dropbear", 12222, "ssh-ed25519 BBBB")]


def test_a_node_with_nothing_recorded_has_empty_facts_and_no_address(
        store: StateStore) -> None:
    facts = nodefacts.load(store, "fsn-9")
    assert facts == nodefacts.NodeFacts(node="fsn-9")
    assert facts.host_key_entries() == []
    with pytest.raises(StateError, match="no recorded ssh address for node fsn-9; "
                                         "provision it first"):
        facts.require_ssh()


@pytest.mark.parametrize(("key", "value"), [
    ("ssh", "127.0.0.1:10022"),
    ("unlock", {"host": "127.0.0.1", "port": "two"}),
    ("ssh_host_key", "not-a-key"),
    ("layout", {"hostname": "fsn-1"}),
    ("disks", ["SERIAL-A"]),
])
def test_a_malformed_fact_is_a_one_line_state_error_naming_node_and_key(
        store: StateStore, key: str, value: object) -> None:
    store.set_fact("fsn-1", key, value)
    with pytest.raises(StateError) as caught:
        nodefacts.load(store, "fsn-1")
    message = str(caught.value)
    assert message.startswith(f"node fsn-1: fact {key!r} is ") and "\n" not in message


def provisioned(store: StateStore) -> str:
    """fsn-1 recorded as provision leaves it (addresses, both host keys): its sshd key."""
    ssh_key = generate_ed25519("root@fsn-1").public_line
    nodefacts.record_server(store, "fsn-1", server())
    nodefacts.record_host_keys(store, "fsn-1", ssh_host_key=ssh_key,
                               dropbear_host_key=generate_ed25519().public_line)
    return ssh_key


def test_load_pinned_writes_the_nodes_keys_and_forgets_keys_no_longer_recorded(
        store: StateStore, tmp_path: Path) -> None:
    known_hosts = KnownHosts(tmp_path / "known_hosts")
    ssh_key = provisioned(store)

    facts = nodefacts.load_pinned(store, "fsn-1", known_hosts)

    assert set(known_hosts.entries()) == set(facts.host_key_entries())
    assert known_hosts.keys_for("127.0.0.1", 10022) == [" ".join(ssh_key.split()[:2])]
    # A key changed in the store (a reinstall, or a test pinning a wrong one) is what the
    # next connection checks against.
    replacement = generate_ed25519().public_line
    store.set_fact("fsn-1", nodefacts.SSH_HOST_KEY, replacement)
    nodefacts.load_pinned(store, "fsn-1", known_hosts)
    assert known_hosts.keys_for("127.0.0.1", 10022) == [replacement]
    # Retired: its facts are gone, and so are its entries.
    store.delete_facts("fsn-1")
    nodefacts.load_pinned(store, "fsn-1", known_hosts)
    assert known_hosts.entries() == []


def test_seen_from_a_lab_vm_the_controllers_loopback_is_qemus_gateway(
        store: StateStore, tmp_path: Path) -> None:
    known_hosts = KnownHosts(tmp_path / "known_hosts")
    ssh_key = provisioned(store)

    facts = nodefacts.load_pinned(store, "fsn-1", known_hosts, loopback_as="10.0.2.2")

    assert (facts.ssh, facts.unlock) == (SshAccess("10.0.2.2", 10022),
                                         SshAccess("10.0.2.2", 12222))
    # The pins are written for the addresses this side connects to.
    assert known_hosts.keys_for("10.0.2.2", 10022) == [" ".join(ssh_key.split()[:2])]
    assert known_hosts.keys_for("127.0.0.1", 10022) == []
    # An address that is not the controller's loopback is reached as recorded.
    public = dataclasses.replace(facts, ssh=SshAccess("203.0.113.10", 22), unlock=None)
    assert nodefacts.seen_from(public, "10.0.2.2") == public
    assert nodefacts.seen_from(public, "") is public


def test_forwarded_ports_and_the_private_address_round_trip(store: StateStore) -> None:
    info = dataclasses.replace(server(), forwarded_ports={"tcp/8081": ("127.0.0.1", 40123),
                                                          "udp/53": ("127.0.0.1", 40124)})
    nodefacts.record_server(store, "fsn-1", info)
    nodefacts.record_private_address(store, "fsn-1", "10.99.0.11/24")
    facts = nodefacts.load(store, "fsn-1")
    assert dict(facts.forwarded_ports) == {"tcp/8081": ("127.0.0.1", 40123),
                                           "udp/53": ("127.0.0.1", 40124)}
    assert store.get_fact("fsn-1", "forwarded_ports")["udp/53"] == ["127.0.0.1", 40124]
    assert (facts.private_address, facts.private_ip) == ("10.99.0.11/24", "10.99.0.11")
    store.set_fact("fsn-1", "forwarded_ports", {"tcp/8081": "nowhere"})
    with pytest.raises(StateError, match="fact 'forwarded_ports'"):
        nodefacts.load(store, "fsn-1")
