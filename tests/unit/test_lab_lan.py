"""The lab fleet's LAN: one segment per fleet state, stable addresses, a second NIC."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from clonefleet.image.node import interfaces_text
from clonefleet.lab import lan, qemu
from clonefleet.providers.base import InitramfsNetwork

pytestmark = pytest.mark.unit


def test_seats_are_stable_distinct_and_reused_only_after_release(tmp_path: Path) -> None:
    first = lan.seat(tmp_path, "fsn-1")
    second = lan.seat(tmp_path, "ash-1")
    assert first == lan.seat(tmp_path, "fsn-1")
    assert (first.address, second.address) == ("10.99.0.11/24", "10.99.0.12/24")
    assert (first.group, first.port) == (second.group, second.port)
    assert first.group.startswith("239.77.") and first.mac != second.mac
    lan.release(tmp_path, "fsn-1")
    assert lan.seat(tmp_path, "gra-1").address == "10.99.0.11/24"
    other = lan.seat(tmp_path / "other-fleet", "fsn-1")
    assert (other.group, other.port) != (first.group, first.port)


def test_nodes_created_at_once_get_distinct_addresses(tmp_path: Path) -> None:
    seats: dict[str, lan.LanSeat] = {}
    barrier = threading.Barrier(6)

    def take(name: str) -> None:
        barrier.wait()
        seats[name] = lan.seat(tmp_path, name)

    threads = [threading.Thread(target=take, args=(f"n{index}",)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({seat.address for seat in seats.values()}) == 6
    assert len(json.loads((tmp_path / "lan.json").read_text())["addresses"]) == 6


def test_the_vm_gets_a_second_nic_on_a_loopback_multicast_socket(tmp_path: Path) -> None:
    config = qemu.VmConfig(name="fsn-1", directory=tmp_path, memory_mb=512, disks=[],
                           ssh_port=1, dropbear_port=2, lan_group="239.77.1.2",
                           lan_port=40000, lan_mac="52:54:00:99:00:0b")
    argv = qemu.qemu_argv(config, accel="tcg")
    assert "socket,id=lan,mcast=239.77.1.2:40000,localaddr=127.0.0.1" in argv
    assert "virtio-net-pci,netdev=lan,mac=52:54:00:99:00:0b,romfile=" in argv
    # A VM saved before the LAN existed starts as it did.
    config.lan_port = 0
    assert not any("id=lan" in part for part in qemu.qemu_argv(config, accel="tcg"))


def test_the_booted_node_configures_its_private_address_without_a_gateway() -> None:
    text = interfaces_text(InitramfsNetwork(mode="dhcp", private_address="10.99.0.11/24"))
    assert "auto eth1\niface eth1 inet static\n    address 10.99.0.11/24\n" in text
    assert text.count("gateway") == 0
    assert "eth1" not in interfaces_text(InitramfsNetwork(mode="dhcp"))
