"""The base deploy carries `clonefleet keys grant|revoke` to Dropbear's initramfs
authorized_keys, in a chroot of the node image: the operator's key and every granted
unlocker's, each restricted to cryptroot-unlock; a second run changes nothing; a revoke takes
the key out. (Offline, the initramfs is not rebuilt here: that step runs on a live node.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from chroot_fixture import ChrootFleet, chroot_nodes, control_plane_host_data, run_deploy

from clonefleet.image.node import initramfs_authorized_keys
from clonefleet.inventory import load_fleet
from clonefleet.ssh import ensure_operator_key, generate_ed25519
from clonefleet.state import open_store
from clonefleet.unlockers import fleet_keystore, grant, revoke

pytestmark = pytest.mark.integration

AUTHORIZED = "etc/dropbear/initramfs/authorized_keys"


def test_grant_and_revoke_reach_dropbears_authorized_keys_through_the_base_deploy(
        node_image: Path, chroot_fleet: ChrootFleet) -> None:
    fleet = load_fleet(chroot_fleet.fleet_path)
    store = open_store(chroot_fleet.state_dir)
    keystore = fleet_keystore(chroot_fleet.state_dir, store)
    keystore.create("fsn-1")
    unlocker = generate_ed25519("unlocker@u1").public_line
    grant(store, keystore, "u1", unlocker)
    operator = ensure_operator_key(fleet.ssh_key, chroot_fleet.state_dir).public_line

    with chroot_nodes(node_image, chroot_fleet.workdir / "unlock-keys", ["fsn-1"]) as nodes:
        node = nodes["fsn-1"]
        node.data = control_plane_host_data(chroot_fleet.fleet_path, chroot_fleet.state_dir,
                                            ["fsn-1"])["fsn-1"]
        first = run_deploy([node], "deploys.base:base")["fsn-1"]
        assert not first.failed, first.errors
        assert any("Dropbear (initramfs)" in name for name in first.changed), first.changed
        written = (node.root / AUTHORIZED)
        assert written.read_text() == initramfs_authorized_keys(
            [operator, " ".join(unlocker.split()[:2])])
        assert oct(written.stat().st_mode & 0o777) == "0o600"

        again = run_deploy([node], "deploys.base:base")["fsn-1"]
        assert not again.failed and again.changed == []

        revoke(store, keystore, "u1")
        node.data = control_plane_host_data(chroot_fleet.fleet_path, chroot_fleet.state_dir,
                                            ["fsn-1"])["fsn-1"]
        after = run_deploy([node], "deploys.base:base")["fsn-1"]
        assert not after.failed, after.errors
        assert written.read_text() == initramfs_authorized_keys([operator])
