"""Install planning, disk matching by serial, unlock messages, initramfs network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clonefleet.errors import InstallError, UnlockError
from clonefleet.install.disks import match_disks
from clonefleet.install.plan import make_plan
from clonefleet.inventory import load_fleet
from clonefleet.providers.base import InitramfsNetwork
from clonefleet.unlock import BadPassphrase, TooManyTries, UnlockNotReady, interpret

pytestmark = pytest.mark.unit

LAB = Path(__file__).resolve().parents[2] / "inventory" / "lab.toml"
LSBLK = json.dumps({"blockdevices": [
    {"name": "vda", "serial": "CFLAB-FSN2-A", "size": "8G", "type": "disk", "model": None},
    {"name": "vdb", "serial": "CFLAB-FSN2-B", "size": "8G", "type": "disk", "model": None},
    {"name": "loop0", "serial": None, "size": "1G", "type": "loop", "model": None},
]})
BY_ID = ("virtio-CFLAB-FSN2-A=/dev/vda\nvirtio-CFLAB-FSN2-A-part1=/dev/vda1\n"
         "virtio-CFLAB-FSN2-B=/dev/vdb\n")


def test_disks_are_matched_by_serial_to_by_id_paths() -> None:
    disks = match_disks(("CFLAB-FSN2-B", "CFLAB-FSN2-A"), LSBLK, BY_ID, "fsn-2")
    assert [d.by_id for d in disks] == ["/dev/disk/by-id/virtio-CFLAB-FSN2-B",
                                        "/dev/disk/by-id/virtio-CFLAB-FSN2-A"]


def test_missing_disk_refuses_to_wipe_and_lists_what_is_there() -> None:
    with pytest.raises(InstallError, match="refusing to wipe") as caught:
        match_disks(("CFLAB-FSN1-A",), LSBLK, BY_ID, "fsn-1")
    assert "vda=CFLAB-FSN2-A" in str(caught.value)


def test_raid_plan_has_mirrored_boot_and_root_and_fits_argon2_in_memory() -> None:
    fleet = load_fleet(LAB)
    plan = make_plan(fleet, fleet.node("fsn-2"), InitramfsNetwork("dhcp"))
    description = plan.describe()
    assert description["raid1"] is True
    assert any("RAID1" in p and "/boot" in p for p in plan.partitions)
    assert plan.pbkdf_memory_kib == 2048 * 1024 // 4
    assert plan.layout.md_root_uuid.count(":") == 3
    assert "ip=:::::eth0:dhcp" in str(description["kernel_cmdline"])


def test_each_plan_gets_fresh_luks_uuid() -> None:
    fleet = load_fleet(LAB)
    node = fleet.node("fsn-1")
    first = make_plan(fleet, node, InitramfsNetwork("dhcp"))
    second = make_plan(fleet, node, InitramfsNetwork("dhcp"))
    assert first.layout.luks_uuid != second.layout.luks_uuid


def test_static_network_becomes_a_kernel_ip_argument() -> None:
    network = InitramfsNetwork("static", address="203.0.113.5", prefix=32,
                               gateway="172.31.1.1")
    assert network.kernel_ip_arg() == "ip=203.0.113.5::172.31.1.1:255.255.255.255::eth0:off"


@pytest.mark.parametrize(("output", "error"), [
    ("cryptsetup: cryptsetup failed, bad password or options?", BadPassphrase),
    ("cryptsetup: maximum number of tries exceeded for root", TooManyTries),
    ("Error: Timeout reached while waiting for askpass.", UnlockNotReady),
    ("Try again later", UnlockNotReady),
])
def test_cryptroot_unlock_messages_become_distinct_errors(output: str,
                                                          error: type[Exception]) -> None:
    with pytest.raises(error):
        interpret(1, output)


def test_unlock_success_message_is_returned() -> None:
    assert interpret(0, "Please unlock disk root\ncryptsetup: root set up successfully\n") \
        == "cryptsetup: root set up successfully"


def test_unknown_unlock_failure_is_still_an_unlock_error() -> None:
    with pytest.raises(UnlockError, match="exit 2"):
        interpret(2, "something else")


def test_connection_closed_by_the_initramfs_is_confirmed_later_not_an_error() -> None:
    assert "likely unlocked" in interpret(None, "")


def test_two_disk_plan_describes_the_hybrid_layout_with_an_esp_on_each_disk() -> None:
    fleet = load_fleet(LAB)
    plan = make_plan(fleet, fleet.node("fsn-2"), InitramfsNetwork("dhcp"))
    p1, p2, p3, p4 = plan.partitions
    assert p1.startswith("p1 1 MiB BIOS boot") and "every disk" in p1
    assert p2.startswith("p2 256 MiB EFI system partition, vfat") and "every disk" in p2
    assert "not mirrored" in p2 and "RAID" not in p2
    assert p3.startswith("p3 512 MiB md RAID1 (metadata 1.0) -> ext4 /boot")
    assert p4.startswith("p4 rest md RAID1 (metadata 1.2) -> LUKS2")
    description = plan.describe()
    assert "UEFI" in str(description["boot"]) and "BIOS" in str(description["boot"])
    assert len(description["esp_uuids"]) == 2  # type: ignore[arg-type]


def test_one_disk_plan_describes_the_same_hybrid_layout_without_raid() -> None:
    fleet = load_fleet(LAB)
    plan = make_plan(fleet, fleet.node("fsn-1"), InitramfsNetwork("dhcp"))
    assert [p.split()[0] for p in plan.partitions] == ["p1", "p2", "p3", "p4"]
    assert "EFI system partition" in plan.partitions[1]
    assert not any("RAID" in p for p in plan.partitions)
    assert plan.partitions[3].startswith("p4 rest LUKS2 argon2id -> ext4 /")
    assert len(plan.layout.esp_volume_ids) == 1
    assert plan.layout.esp_uuid == \
        f"{plan.layout.esp_volume_ids[0][:4]}-{plan.layout.esp_volume_ids[0][4:]}"
