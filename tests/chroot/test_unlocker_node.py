"""An unlocker on a fleet node, end to end without a VM: `clonefleet deploy` (the real deploy
runner, over SSH) puts deploys/unlocker.py on a node, a root filesystem of the node image
served by an OpenSSH whose sessions are chrooted into it; the runner's after-deploy hook reads
the identity's public line over that pinned SSH session and grants it as `node:fsn-1`; then
the unlocker runs as installed — the node's own python3 (Debian 12's 3.11) with Debian's
packages and the shipped archive, started in the root filesystem with `chroot` — against a
real etcd and a real Dropbear on loopback (a chroot shares this machine's network, so
127.0.0.1 inside is the host's loopback). The Dropbear stands for another node waiting in its
initramfs: its stand-in cryptroot-unlock counts every passphrase it reads, and once it took
one, that node's sshd comes up as a booted node's would.

What is not real here: systemd (the deploy runs with `clonefleet_offline`, so the unit is
written and enabled, not started; `systemd-analyze verify` checks it) and the Dropbear node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from apt_repo_fixture import sshd_chroot_folder
from chroot_fixture import (
    ChrootFleet,
    ChrootNode,
    chroot_nodes,
    control_plane_host_data,
)
from chroot_fixture import run_deploy as run_chroot_deploy
from dropbear_fixture import Dropbear, dropbear_available, make_dropbear
from etcd_fixture import EtcdServer, etcd_server  # noqa: F401  (a fixture: the session's etcd)
from sshd_fixture import Sshd, sshd_fleet
from webhook_fixture import Webhook

from clonefleet import nodefacts
from clonefleet.deploy import DeployResult, run_deploy
from clonefleet.inventory import Fleet, load_fleet
from clonefleet.keystore import Keystore
from clonefleet.state import FLEET_FACTS, StateStore, open_store
from clonefleet.unlockers import GRANTED, fleet_keystore, registered

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not dropbear_available(), reason="dropbear not installed")]

UNLOCKER = "fsn-1"  # the fleet node that runs an unlocker
WAITING = "ash-1"  # another node, waiting in its initramfs: a Dropbear on loopback
UNIT = "etc/systemd/system/clonefleet-unlockd.service"
CONFIG = "etc/clonefleet-unlockd"

# clonefleet_offline: no systemd runs in the served root (nothing is started there).
DEPLOY_MODULE = '''
from pyinfra import host
from pyinfra.api import deploy

from deploys.base import dropbear_unlock_keys
from deploys.unlocker import unlocker, unlocker_removed


@deploy("unlocker, offline")
def installed():
    host.data.clonefleet_offline = True
    # The base deploy's step that lets granted unlockers into Dropbear, as deploys.full runs
    # it first: its keys come from the host data computed after the before-deploy grant.
    dropbear_unlock_keys()
    unlocker()


@deploy("unlocker removed, offline")
def removed():
    host.data.clonefleet_offline = True
    unlocker_removed()
'''


@dataclass
class ServedNode:
    fleet: Fleet
    store: StateStore
    keystore: Keystore
    node: ChrootNode
    url: str
    first: DeployResult
    second: DeployResult
    granted_at: float  # when the first deploy granted the node's key

    @property
    def root(self) -> Path:
        return self.node.root


def _fleet_file(folder: Path, sshd: Sshd, url: str, unlockers: str,
                alert_url: str = "") -> Fleet:
    """The one-node fleet of `sshd_fleet`, on etcd, with `unlockers` in [unlock] and its
    alerts to `alert_url`."""
    path = sshd_fleet(folder, sshd, "unlockernode")
    alerts = f'alert_urls = ["{alert_url}"]\n' if alert_url else ""
    text = path.read_text().replace("[fleet]\n", f'[fleet]\nstate = "{url}"\n{alerts}', 1)
    path.write_text(text.split("\n[unlock]\n")[0] + f"\n[unlock]\nunlockers = [{unlockers}]\n")
    return load_fleet(path)


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    """Where the fleet's alerts go (the grant publishes the URL for unlockers)."""
    receiver = Webhook()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="module")
def served(node_image: Path, etcd_server: EtcdServer,  # noqa: F811
           tmp_path_factory: pytest.TempPathFactory, webhook: Webhook) -> Iterator[ServedNode]:
    tmp_path = tmp_path_factory.mktemp("unlocker-node")
    url = (f"etcd://127.0.0.1:{etcd_server.client_port}/clonefleet/"
           f"unlockernode-{os.urandom(4).hex()}")
    (tmp_path / "unlockerdeploy.py").write_text(DEPLOY_MODULE)
    with pytest.MonkeyPatch.context() as patch, sshd_chroot_folder() as folder, \
            chroot_nodes(node_image, folder, [UNLOCKER]) as nodes:
        patch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
        patch.setenv("CLONEFLEET_AGE_KEY", str(tmp_path / "age.key"))
        node = nodes[UNLOCKER]
        sshd = Sshd(folder / "sshd", extra_config=f"ChrootDirectory {node.root}\n")
        try:
            fleet = _fleet_file(tmp_path, sshd, url, f'"{UNLOCKER}"', webhook.url)
            store = open_store(tmp_path / "state" / "unlockernode", fleet.state)
            store.set_state(UNLOCKER, "deployed", actor="test")
            store.set_fact(UNLOCKER, nodefacts.SSH_ACCESS, {"host": "127.0.0.1",
                                                            "port": sshd.port})
            store.set_fact(UNLOCKER, nodefacts.SSH_HOST_KEY, sshd.host_key)
            keystore = fleet_keystore(tmp_path / "state" / "unlockernode", store)
            keystore.create(WAITING)  # provisioned before any unlocker existed
            first = run_deploy(fleet.path, [UNLOCKER], "unlockerdeploy:installed",
                               timeout=600)[UNLOCKER]
            granted = registered(store).get(f"node:{UNLOCKER}")
            second = run_deploy(fleet.path, [UNLOCKER], "unlockerdeploy:installed",
                                timeout=300)[UNLOCKER]
            yield ServedNode(fleet, store, keystore, node, url, first, second,
                             granted.at if granted else 0.0)
        finally:
            sshd.stop()


def _mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def test_the_deploy_installs_code_identity_and_unit_and_a_second_run_changes_nothing(
        served: ServedNode) -> None:
    first, root = served.first, served.root
    assert not first.failed, first.errors
    assert any(name.endswith("unlocker code") for name in first.changed), first.changed
    identity = root / CONFIG / "identity"
    assert _mode(root / CONFIG) == "0o700"
    assert _mode(identity) == "0o600" and identity.stat().st_uid == 0
    assert identity.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    environment = (root / CONFIG / "unlocker.env").read_text()
    assert f"CLONEFLEET_UNLOCKD_STATE={served.url}\n" in environment
    # The fleet's node is a "lab" node: a lab VM reaches the recorded loopback addresses
    # at qemu's gateway (started by hand below, on this machine's loopback, without it).
    assert environment.endswith("CLONEFLEET_UNLOCKD_LOOPBACK_AS=10.0.2.2\n")
    lib = root / "opt/clonefleet-unlockd/lib"
    assert lib.is_symlink()
    assert {"clonefleet", "paramiko", "etcd3gw", "pyrage"} <= {p.name for p in lib.iterdir()}
    assert _mode(root / "usr/local/bin/clonefleet-unlockd") == "0o755"
    unit = (root / UNIT).read_text()
    assert "LoadCredential=identity:/etc/clonefleet-unlockd/identity" in unit
    assert "DynamicUser=yes" in unit and "--identity %d/identity" in unit
    assert (root / "etc/systemd/system/multi-user.target.wants/clonefleet-unlockd.service"
            ).is_symlink()
    verify = subprocess.run(["chroot", str(root), "systemd-analyze", "verify",
                             "/etc/systemd/system/clonefleet-unlockd.service"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert verify.returncode == 0 and "clonefleet-unlockd" not in verify.stderr, verify.stderr

    second = served.second
    assert not second.failed and second.changed == (), second.changed


def test_the_deploy_grants_the_key_made_on_the_node_and_nothing_else_leaves_it(
        served: ServedNode) -> None:
    public = (served.root / CONFIG / "identity.pub").read_text().split()
    granted = registered(served.store)[f"node:{UNLOCKER}"]
    assert granted.status == GRANTED
    assert granted.key == " ".join(public[:2])
    # The second deploy found it granted with that key: not granted (re-encrypted) again.
    assert granted.at == served.granted_at
    # Granted before the deploy, so this same deploy let it into the node's Dropbear.
    authorized = (served.root / "etc/dropbear/initramfs/authorized_keys").read_text()
    assert any(line.endswith(granted.key) for line in authorized.splitlines()), authorized
    # The controller never held the private key: nothing of it is in the store.
    private = (served.root / CONFIG / "identity").read_text()
    body = "".join(private.splitlines()[1:-1])
    for scope in (UNLOCKER, WAITING, FLEET_FACTS):
        assert body[:40] not in json.dumps(served.store.facts(scope))


def _boot_when_unlocked(dropbear: Dropbear, sshd: Sshd, stop: threading.Event) -> None:
    """Leave the initramfs once a passphrase was accepted: Dropbear off, sshd on."""
    while not stop.is_set():
        if "ok" in dropbear.deliveries():
            time.sleep(0.2)  # the unlock's own connection ends first
            dropbear.stop()
            sshd.start()
            return
        time.sleep(0.05)


def test_the_installed_unlocker_unlocks_another_node_once(served: ServedNode, tmp_path: Path,
                                                          webhook: Webhook) -> None:
    store = served.store
    dropbear = make_dropbear(tmp_path / "dropbear", served.keystore.get(WAITING))
    # What the base deploy writes into every node's initramfs for a granted unlocker.
    dropbear.authorize((served.root / CONFIG / "identity.pub").read_text())
    sshd = Sshd(tmp_path / "sshd")
    sshd.stop()
    store.set_state(WAITING, "deployed", actor="test")
    store.set_fact(WAITING, nodefacts.UNLOCK_ACCESS, {"host": "127.0.0.1",
                                                      "port": dropbear.port})
    store.set_fact(WAITING, nodefacts.SSH_ACCESS, {"host": "127.0.0.1", "port": sshd.port})
    store.set_fact(WAITING, nodefacts.DROPBEAR_HOST_KEY, dropbear.host_key)
    store.set_fact(WAITING, nodefacts.SSH_HOST_KEY, sshd.host_key)

    stop = threading.Event()
    watcher = threading.Thread(target=_boot_when_unlocked, args=(dropbear, sshd, stop),
                               daemon=True)
    # The unit's command, minus systemd: the installed wrapper on the node's python3, with
    # nothing but the identity and the store's address (no fleet file, no keystore key).
    command = [shutil.which("chroot") or "chroot", str(served.root),
               "/usr/local/bin/clonefleet-unlockd", "--once", "--state", served.url,
               "--identity", "/etc/clonefleet-unlockd/identity",
               "--work-dir", "/var/lib/clonefleet-unlockd", "--name", f"node:{UNLOCKER}",
               "--lease-ttl", "6", "--confirm-timeout", "20"]
    environment = {"PATH": "/usr/bin:/bin", "HOME": "/root"}
    try:
        dropbear.start()
        watcher.start()
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env=environment, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert WAITING in done.stdout and "unlocked" in done.stdout, done.stdout + done.stderr
        assert dropbear.deliveries() == ["ok"]  # exactly one passphrase, the right one
        # Its alert went out through apprise on the node's python3 (the shipped smartwatch
        # sender): an unlocker with alert URLs once could not even start without it.
        assert f"{WAITING}: rebooted, waiting for unlock" in webhook.titles(), webhook.received
        steps = {(step.step, step.status) for step in store.steps(WAITING)}
        assert {("unlockd unlock", "done"), ("unlockd confirm sshd", "done")} <= steps, steps

        again = subprocess.run(command, capture_output=True, text=True, timeout=120,
                               env=environment, check=False)
        assert again.returncode == 0, again.stdout + again.stderr
        assert dropbear.deliveries() == ["ok"]  # the node is up: nothing sent again
    finally:
        stop.set()
        watcher.join(5)
        dropbear.stop()
        if sshd.process.poll() is None:
            sshd.stop()


def test_a_node_taken_off_the_list_loses_its_unlocker_and_its_grant(
        served: ServedNode, tmp_path: Path) -> None:
    fleet_path = served.fleet.path
    text = fleet_path.read_text()
    try:
        fleet_path.write_text(text.replace(f'unlockers = ["{UNLOCKER}"]', "unlockers = []"))
        result = run_deploy(fleet_path, [UNLOCKER], "unlockerdeploy:removed",
                            timeout=300)[UNLOCKER]
        assert not result.failed, result.errors
        assert f"node:{UNLOCKER}" not in registered(served.store)
        for gone in (UNIT, CONFIG, "opt/clonefleet-unlockd", "usr/local/bin/clonefleet-unlockd"):
            assert not (served.root / gone).exists(), gone
        again = run_deploy(fleet_path, [UNLOCKER], "unlockerdeploy:removed",
                           timeout=300)[UNLOCKER]
        assert not again.failed and again.changed == ()
    finally:
        fleet_path.write_text(text)


def test_the_full_node_deploy_composes_the_unlocker_only_where_listed_and_converges(
        node_image: Path, chroot_fleet: ChrootFleet, served: ServedNode) -> None:
    """deploys.full:node with the host data `clonefleet deploy` gives a listed node and an
    unlisted one (pyinfra's @chroot connector, offline): the unlocker on the first only, and
    a second run of the whole node changes nothing."""
    names = [UNLOCKER, WAITING]
    data = control_plane_host_data(chroot_fleet.fleet_path, chroot_fleet.state_dir, names)
    data[UNLOCKER].update(clonefleet_unlocker=True, unlocker_store_url=served.url)
    with chroot_nodes(node_image, chroot_fleet.workdir / "full", names) as nodes:
        for name, node in nodes.items():
            node.data = data[name]
        first = run_chroot_deploy(list(nodes.values()))
        assert not any(result.failed for result in first.values()), first
        assert (nodes[UNLOCKER].root / UNIT).is_file()
        assert (nodes[UNLOCKER].root / CONFIG / "identity").is_file()
        assert not (nodes[WAITING].root / UNIT).exists()
        assert not (nodes[WAITING].root / "opt/clonefleet-unlockd").exists()
        again = run_chroot_deploy(list(nodes.values()))
        assert {name: result.changed for name, result in again.items()} == {
            UNLOCKER: [], WAITING: []}
