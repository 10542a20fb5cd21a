"""The fleet as pyinfra hosts: addresses from the recorded facts, and the fleet's known_hosts
(refreshed from the pinned keys) with strict checking on every host."""

from __future__ import annotations

from pathlib import Path

import pytest

from clonefleet import nodefacts
from clonefleet.inventory import load_fleet
from clonefleet.known_hosts import fleet_known_hosts
from clonefleet.providers.base import ServerInfo, SshAccess
from clonefleet.pyinfra_inventory import host_data
from clonefleet.ssh import generate_ed25519
from clonefleet.state import SqliteStateStore

pytestmark = pytest.mark.unit
LAB = Path(__file__).resolve().parents[2] / "inventory" / "lab.toml"


@pytest.fixture(autouse=True)
def own_age_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Services create deploy secrets: under this test's key, never the operator's."""
    monkeypatch.setenv("CLONEFLEET_AGE_KEY", str(tmp_path / "age.key"))


def installed(store: SqliteStateStore, node: str, ssh_port: int) -> str:
    nodefacts.record_server(store, node, ServerInfo(
        node=node, server_id=f"lab-{node}", status="disk", ssh=SshAccess("127.0.0.1", ssh_port),
        unlock=SshAccess("127.0.0.1", ssh_port + 1000)))
    key = generate_ed25519(f"root@{node}").public_line
    nodefacts.record_host_keys(store, node, ssh_host_key=key,
                               dropbear_host_key=generate_ed25519().public_line)
    return " ".join(key.split()[:2])


def test_hosts_use_the_recorded_address_and_the_fleets_known_hosts_strictly(
        tmp_path: Path) -> None:
    fleet = load_fleet(LAB)
    store = SqliteStateStore(tmp_path / "state.sqlite")
    keys = {"fsn-1": installed(store, "fsn-1", 10022), "ash-1": installed(store, "ash-1", 10023)}

    hosts = dict(host_data(fleet, store, tmp_path))

    assert sorted(hosts) == ["ash-1", "fsn-1"]  # fsn-2 has no recorded address
    known_hosts = fleet_known_hosts(tmp_path)
    for name, port in (("fsn-1", 10022), ("ash-1", 10023)):
        data = hosts[name]
        assert (data["ssh_hostname"], data["ssh_port"]) == ("127.0.0.1", port)
        assert data["ssh_known_hosts_file"] == str(known_hosts.path)
        assert data["ssh_strict_host_key_checking"] == "yes"
        assert known_hosts.keys_for("127.0.0.1", port) == [keys[name]]
        # once, in the base data, whatever services the fleet runs (a lab node also sees
        # the controller as qemu's gateway)
        assert data["clonefleet_controller_addresses"] == ["10.0.2.2/32"]


def test_another_nodes_damaged_facts_do_not_stop_a_deploy_of_this_one(tmp_path: Path) -> None:
    fleet = load_fleet(LAB)
    store = SqliteStateStore(tmp_path / "state.sqlite")
    key = installed(store, "fsn-1", 10022)
    store.set_fact("fsn-2", nodefacts.SSH_ACCESS, "127.0.0.1:10024")

    [(name, data)] = host_data(fleet, store, tmp_path, ["fsn-1"])

    assert name == "fsn-1" and data["ssh_port"] == 10022
    assert fleet_known_hosts(tmp_path).keys_for("127.0.0.1", 10022) == [key]


def test_unlock_keys_are_the_operators_then_the_granted_unlockers_as_the_node_layer_writes(
        tmp_path: Path) -> None:
    from clonefleet.image.node import initramfs_authorized_keys
    from clonefleet.ssh import ensure_operator_key
    from clonefleet.unlockers import fleet_keystore, grant, revoke

    fleet = load_fleet(LAB)
    store = SqliteStateStore(tmp_path / "state.sqlite")
    installed(store, "fsn-1", 10022)
    operator = ensure_operator_key(fleet.ssh_key, tmp_path).public_line
    # A fleet that never granted an unlocker: the file stays as the install wrote it.
    assert dict(host_data(fleet, store, tmp_path))["fsn-1"]["clonefleet_unlock_keys"] == []
    unlocker = generate_ed25519("unlocker@u1").public_line
    grant(store, fleet_keystore(tmp_path, store), "u1", unlocker)
    keys = dict(host_data(fleet, store, tmp_path))["fsn-1"]["clonefleet_unlock_keys"]
    assert keys == [operator, " ".join(unlocker.split()[:2])]
    lines = initramfs_authorized_keys(keys).splitlines()
    revoke(store, fleet_keystore(tmp_path, store), "u1")  # the last one: still managed
    assert dict(host_data(fleet, store, tmp_path))["fsn-1"]["clonefleet_unlock_keys"] == [
        operator]
    assert all(line.startswith("no-port-forwarding,") and 'command="/bin/cryptroot-unlock"'
               in line for line in lines)
