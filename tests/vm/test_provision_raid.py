"""End to end on a two-disk lab VM: RAID1 under LUKS, bootable from either disk.

The node is `firmware = "uefi"` in the lab fleet: its VM boots OVMF, so this also proves the
UEFI path (an ESP with GRUB at the removable path on each disk). BIOS GRUB is installed on
both disks too (the hybrid layout); the single-disk test boots that one under SeaBIOS.
"""

from __future__ import annotations

import json

import pytest

from .conftest import Lab
from .raid_checks import (
    check_boots_from_either_disk,
    check_key_rotation,
    check_mirrored_uefi_node,
)

pytestmark = pytest.mark.vm
NODE = "fsn-2"


def test_two_disk_node_mirrors_under_luks_and_boots_from_either_disk(lab: Lab) -> None:
    # The base and the smartwatch agent: this module proves disks and boot paths; the full
    # clone's services are proved on the several-nodes VMs and in tests/chroot.
    report = json.loads(lab.cli("--json", "provision", NODE, "--deploy",
                                "deploys.full:base_node").stdout)
    assert report["state"] == "deployed"
    assert "raid1" in [step["step"] for step in report["steps"]]

    check_mirrored_uefi_node(lab, NODE)
    # Rotated before the reboots below: each of them unlocks with the new passphrase.
    check_key_rotation(lab, NODE, report["recovery_key"])
    check_boots_from_either_disk(lab, NODE)
