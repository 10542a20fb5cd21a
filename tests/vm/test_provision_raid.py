"""End to end on a two-disk lab VM: RAID1 under LUKS, bootable from either disk."""

from __future__ import annotations

import json

import pytest

from .conftest import Lab

pytestmark = pytest.mark.vm
NODE = "fsn-2"


def test_two_disk_node_mirrors_under_luks_and_boots_from_either_disk(lab: Lab) -> None:
    report = json.loads(lab.cli("--json", "provision", NODE).stdout)
    assert report["state"] == "deployed"
    assert "raid1" in [step["step"] for step in report["steps"]]

    with lab.shell(NODE) as shell:
        mdstat = shell.run("cat /proc/mdstat")[1]
        assert mdstat.count(": active raid1 ") == 2 and mdstat.count("[UU]") == 2, mdstat
        status = shell.run("cryptsetup status root")[1]
        assert "type:    LUKS2" in status
        device = next(line.split()[1] for line in status.splitlines()
                      if line.strip().startswith("device:"))
        assert device.startswith("/dev/md"), status
        # GRUB's core image sits in the BIOS boot partition of both disks.
        for serial in lab.fleet.node(NODE).disks:
            assert "GRUB" in shell.run(
                f"dd if=/dev/disk/by-id/virtio-{serial} bs=512 count=1 2>/dev/null | strings")[1]

    node = lab.fleet.node(NODE)
    for serial in node.disks:
        lab.provider.power_off(node)
        lab.provider.boot_disk(node, disks=[serial])
        lab.cli("unlock", NODE)
        with lab.shell(NODE) as shell:
            assert "is active" in shell.run("cryptsetup status root")[1]
            disks = shell.run("ls /dev/disk/by-id")[1]
            assert f"virtio-{serial}" in disks
            other = next(s for s in node.disks if s != serial)
            assert f"virtio-{other}" not in disks
            assert "[2/1]" in shell.run("cat /proc/mdstat")[1]
