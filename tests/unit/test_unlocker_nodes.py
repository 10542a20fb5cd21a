"""Unlockers on fleet nodes, on the controller's side: the host data that puts the unlocker
deploy on the listed nodes, and the deploy hooks that grant each node's key as `node:<NAME>`
(once; before the deploy, so its Dropbear keys carry it), replace a key the node made anew,
and revoke nodes taken off the list."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.errors import KeystoreError
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.keystore import Keystore
from clonefleet.providers.base import ProviderConfig
from clonefleet.services import DeployOutcome, ServiceContext
from clonefleet.services.unlocker import (
    IDENTITY_OPERATION,
    after_deploy,
    before_deploy,
    host_data,
    make_identity_command,
)
from clonefleet.ssh import KeyPair, generate_ed25519
from clonefleet.state import FLEET_FACTS, SqliteStateStore
from clonefleet.unlockers import (
    GRANTED,
    UnlockerPassphrases,
    fleet_keystore,
    initramfs_keys,
    registered,
)

pytestmark = pytest.mark.unit

NODES = [FleetNode("fsn-1", "fsn", "UN-1"), FleetNode("nbg-1", "fsn", "UN-2")]

def _context(fleet: Fleet, node: str, store: SqliteStateStore) -> ServiceContext:
    # No service secrets are involved: the hook reads the keystore and the store only.
    return ServiceContext(fleet, fleet.node(node), store, secrets=None)  # type: ignore[arg-type]


DONE = DeployOutcome(failed=False, succeeded=frozenset({IDENTITY_OPERATION}))


class Controller:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("CLONEFLEET_AGE_KEY", str(tmp_path / "age.key"))
        self.tmp_path = tmp_path
        self.store = SqliteStateStore(tmp_path / "store.sqlite")
        self.fleet = self.load(["fsn-1", "nbg-1"])
        self.keystore: Keystore = fleet_keystore(tmp_path / "state" / "un", self.store)
        for node in ("fsn-1", "nbg-1"):
            self.keystore.create(node)
        self.keys = {node: generate_ed25519(f"unlocker@{node}") for node in ("fsn-1", "nbg-1")}
        self.reads: list[str] = []

    def load(self, unlockers: list[str]) -> Fleet:
        path = self.tmp_path / "un.toml"
        path.write_text(fleet_toml(
            "un", "un.example.com", [FSN], NODES,
            settings={"state": "etcd://10.0.0.1:2379/clonefleet/un"},
            unlock={"unlockers": unlockers, "store_url": "etcd://10.66.0.1:2379"}))
        return load_fleet(path)

    def reader(self) -> Callable[[ServiceContext], str]:
        def read(context: ServiceContext) -> str:
            self.reads.append(context.node.name)
            return self.keys[context.node.name].public_line

        return read

    def deployed(self, node: str, outcome: DeployOutcome = DONE) -> None:
        after_deploy(_context(self.fleet, node, self.store), outcome, read_key=self.reader())

    def before(self, node: str) -> bool:
        return before_deploy(_context(self.fleet, node, self.store), make_key=self.reader())

    def opens(self, key: KeyPair, node: str) -> bool:
        identity = self.tmp_path / "identity"
        identity.write_text(key.private_openssh)
        try:
            UnlockerPassphrases(self.store, identity).get(node)
        except KeystoreError:
            return False
        return True


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Controller:
    return Controller(tmp_path, monkeypatch)


def test_only_listed_nodes_get_the_unlocker_and_the_store_address_they_reach(
        controller: Controller) -> None:
    fleet = controller.load(["fsn-1"])
    data = host_data(_context(fleet, "fsn-1", controller.store))
    assert data["clonefleet_unlocker"] is True
    assert data["unlocker_store_url"] == "etcd://10.66.0.1:2379/clonefleet/un"
    # A lab VM reaches the other VMs' recorded addresses (ports forwarded on the
    # controller's loopback) at qemu's gateway.
    assert data["unlocker_loopback_as"] == "10.0.2.2"
    other = host_data(_context(fleet, "nbg-1", controller.store))
    assert other == {"clonefleet_unlocker": False}


def test_an_unlocker_on_a_real_providers_node_reaches_the_recorded_addresses_as_they_are(
        controller: Controller) -> None:
    fleet = controller.load(["fsn-1"])
    node = fleet.node("fsn-1")
    real = dataclasses.replace(fleet, nodes={**fleet.nodes, "fsn-1": dataclasses.replace(
        node, provider="cloud")}, providers={**fleet.providers, "cloud": ProviderConfig(
            name="cloud", driver="hetzner-cloud", settings={"lab_routes": False})})
    assert host_data(_context(real, "fsn-1", controller.store))["unlocker_loopback_as"] == ""
    faked = dataclasses.replace(real, providers={**fleet.providers, "cloud": ProviderConfig(
        name="cloud", driver="hetzner-cloud", settings={"lab_routes": True})})
    assert host_data(_context(faked, "fsn-1", controller.store))["unlocker_loopback_as"] == \
        "10.0.2.2"


def test_a_deployed_unlocker_node_is_granted_once_and_opens_every_passphrase(
        controller: Controller) -> None:
    controller.deployed("fsn-1")
    granted = registered(controller.store)["node:fsn-1"]
    assert granted.status == GRANTED
    assert granted.key == " ".join(controller.keys["fsn-1"].public_line.split()[:2])
    assert all(controller.opens(controller.keys["fsn-1"], node) for node in ("fsn-1", "nbg-1"))
    # The policy is published for it (an unlocker has no fleet file).
    assert controller.store.get_fact(FLEET_FACTS, "unlockd_config")

    entry = controller.tmp_path / "state" / "un" / "keystore" / "nbg-1.age"
    before = entry.read_bytes()
    controller.deployed("fsn-1")  # the same key: nothing re-encrypted
    assert entry.read_bytes() == before
    assert registered(controller.store)["node:fsn-1"].at == granted.at
    assert controller.reads == ["fsn-1", "fsn-1"]


def test_a_node_whose_identity_step_did_not_succeed_is_not_read_or_granted(
        controller: Controller) -> None:
    controller.deployed("fsn-1", DeployOutcome(failed=True, succeeded=frozenset()))
    assert controller.reads == [] and registered(controller.store) == {}


def test_a_new_key_on_the_node_replaces_the_old_one(controller: Controller) -> None:
    controller.deployed("fsn-1")
    old = controller.keys["fsn-1"]
    controller.keys["fsn-1"] = generate_ed25519("unlocker@fsn-1")  # reinstalled node
    controller.deployed("fsn-1")
    assert controller.opens(controller.keys["fsn-1"], "nbg-1")
    assert not controller.opens(old, "nbg-1")


def test_a_node_taken_off_the_list_is_revoked_by_the_next_deploy_of_any_node(
        controller: Controller) -> None:
    controller.deployed("fsn-1")
    controller.deployed("nbg-1")
    assert set(registered(controller.store)) == {"node:fsn-1", "node:nbg-1"}
    controller.fleet = controller.load(["fsn-1"])
    controller.deployed("fsn-1")
    assert set(registered(controller.store)) == {"node:fsn-1"}
    assert not controller.opens(controller.keys["nbg-1"], "fsn-1")
    assert controller.opens(controller.keys["fsn-1"], "fsn-1")


def test_unlockers_granted_by_hand_are_left_alone(controller: Controller) -> None:
    from clonefleet.unlockers import grant

    grant(controller.store, controller.keystore, "backup-box",
          generate_ed25519("unlocker@box").public_line)
    controller.fleet = controller.load([])
    controller.deployed("nbg-1")
    assert set(registered(controller.store)) == {"backup-box"}


def test_before_the_deploy_a_listed_node_gets_its_key_granted_so_dropbear_keys_carry_it(
        controller: Controller) -> None:
    assert controller.before("fsn-1") is True
    assert registered(controller.store)["node:fsn-1"].status == GRANTED
    assert controller.opens(controller.keys["fsn-1"], "nbg-1")
    # What the runner computes again for every node of this deploy: the key is in it.
    public = " ".join(controller.keys["fsn-1"].public_line.split()[:2])
    assert public in initramfs_keys(controller.store, "ssh-ed25519 AAAAoperator")
    # Granted already: nothing to do, the node is not even asked.
    assert controller.before("fsn-1") is False
    assert controller.reads == ["fsn-1"]
    # After the deploy, the key on the node is the granted one: nothing re-encrypted.
    entry = controller.tmp_path / "state" / "un" / "keystore" / "nbg-1.age"
    before = entry.read_bytes()
    controller.deployed("fsn-1")
    assert entry.read_bytes() == before


def test_before_the_deploy_a_node_taken_off_the_list_is_revoked(controller: Controller) -> None:
    controller.before("fsn-1")
    controller.before("nbg-1")
    controller.fleet = controller.load(["nbg-1"])
    assert controller.before("nbg-1") is True
    assert set(registered(controller.store)) == {"node:nbg-1"}
    assert controller.before("nbg-1") is False


def test_the_identity_command_never_replaces_a_key(tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "etc" / "identity"
    command = make_identity_command(str(key), "unlocker@t")
    subprocess.run(["sh", "-c", command], check=True, timeout=30)
    made = key.read_bytes()
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct(key.parent.stat().st_mode & 0o777) == "0o700"
    key.with_name("identity.pub").unlink()
    subprocess.run(["sh", "-c", command], check=True, timeout=30)
    assert key.read_bytes() == made
    assert key.with_name("identity.pub").read_text().startswith("ssh-ed25519 ")
