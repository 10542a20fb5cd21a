"""The node's network as written into the image: ifupdown, the initramfs and kernel `ip=`."""

from __future__ import annotations

from pathlib import Path

import pytest

from clonefleet.image.node import interfaces_text, kernel_cmdline, onlink_script
from clonefleet.inventory import Node, StaticNetwork
from clonefleet.providers.base import InitramfsNetwork, node_network, static_network

pytestmark = pytest.mark.unit

# qemu's user network, as the issue asks: a /32 whose gateway is off-link.
SLASH32 = StaticNetwork(address="10.0.2.15", prefix=32, gateway="10.0.2.2")


def test_a_slash32_with_an_off_link_gateway_gets_on_link_routes() -> None:
    network = static_network(SLASH32)
    assert network.onlink_gateway and network.mode == "static"
    assert network.kernel_ip_arg() == "ip=10.0.2.15::10.0.2.2:255.255.255.255::eth0:off"
    assert "ip=10.0.2.15::10.0.2.2:255.255.255.255::eth0:off" in kernel_cmdline(network)
    # GRUB writes `ro` first; our `rw` comes after it and wins (the initramfs checks the
    # root and mounts it read-write, independent of systemd's late remount).
    assert " rw " in f" {kernel_cmdline(network)} "
    # No rootdelay: Debian's initramfs would sleep that long at every boot. The wait for the
    # root is set by an init-premount script instead (see the tests below).
    assert "rootdelay" not in kernel_cmdline(network)
    assert " systemd.default_timeout_start_sec=600" in kernel_cmdline(network)
    assert interfaces_text(network) == (
        "auto lo\niface lo inet loopback\n\nauto eth0\n"
        "iface eth0 inet static\n"
        "    address 10.0.2.15/32\n"
        "    post-up ip route replace 10.0.2.2 dev eth0\n"
        "    post-up ip route replace default via 10.0.2.2 dev eth0\n")
    script = onlink_script(network)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh" and lines[1] == '[ "$1" = prereqs ] && exit 0'
    # configure_networking (ip=) first, then the routes klibc's ipconfig cannot add.
    assert lines.index("configure_networking") < lines.index(
        "ip route replace 10.0.2.2 dev eth0 2>/dev/null")
    assert "ip route replace default via 10.0.2.2 dev eth0 2>/dev/null" in lines


def test_a_gateway_inside_the_prefix_is_a_plain_gateway() -> None:
    network = static_network(StaticNetwork(address="198.51.100.10", prefix=24,
                                           gateway="198.51.100.1", interface="eth1"))
    assert not network.onlink_gateway
    assert network.kernel_ip_arg() == "ip=198.51.100.10::198.51.100.1:255.255.255.0::eth1:off"
    assert "    gateway 198.51.100.1\n" in interfaces_text(network)
    assert "post-up" not in interfaces_text(network)
    assert onlink_script(network) == ""


def test_a_gateway_outside_a_wider_prefix_is_on_link_too() -> None:
    network = static_network(StaticNetwork(address="203.0.113.10", prefix=26,
                                           gateway="203.0.113.129"))
    assert network.onlink_gateway and onlink_script(network)


def test_static_ipv6_is_written_with_the_link_local_gateway() -> None:
    network = static_network(StaticNetwork(address="10.0.2.15", prefix=32, gateway="10.0.2.2",
                                           ipv6_address="2001:db8:1::2/64"))
    assert network.ipv6_gateway == "fe80::1"
    text = interfaces_text(network)
    assert text.endswith("\niface eth0 inet6 static\n    address 2001:db8:1::2/64\n"
                         "    gateway fe80::1\n")
    # klibc's ipconfig is IPv4 only: the initramfs' ip= carries no IPv6.
    assert "2001:db8" not in network.kernel_ip_arg() and "2001:db8" not in onlink_script(network)


def test_dhcp_with_static_ipv6_keeps_dhcp_for_ipv4() -> None:
    network = InitramfsNetwork(mode="dhcp", ipv6_address="2a01:4f8:c0c:1::1/64",
                               ipv6_gateway="fe80::1")
    text = interfaces_text(network)
    assert "iface eth0 inet dhcp\n" in text and "iface eth0 inet6 static\n" in text
    assert network.kernel_ip_arg() == "ip=:::::eth0:dhcp"
    assert onlink_script(network) == ""


def test_the_lab_default_is_unchanged() -> None:
    assert interfaces_text(InitramfsNetwork(mode="dhcp")) == (
        "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n")


def test_degraded_raid_script_is_valid_sh_and_runs_after_mdadm(tmp_path: Path) -> None:
    import subprocess

    from clonefleet.image.node import DEGRADED_RAID_SCRIPT

    script = tmp_path / "degraded"
    script.write_text(DEGRADED_RAID_SCRIPT)
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    # initramfs-tools orders local-block scripts by PREREQ: after Debian's own mdadm one.
    prereqs = subprocess.run(["sh", str(script), "prereqs"], capture_output=True, text=True,
                             check=True)
    assert prereqs.stdout.split() == ["mdadm"]


def run_degraded_script(tmp_path: Path, uptime: int) -> list[str]:
    """One local-block round at `uptime` seconds, with an mdadm that only logs its calls."""
    import subprocess

    from clonefleet.image.node import DEGRADED_RAID_SCRIPT

    bin_dir, run = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir(exist_ok=True)
    run.mkdir(exist_ok=True)
    log = tmp_path / "mdadm.log"
    (bin_dir / "mdadm").write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n")
    (bin_dir / "mdadm").chmod(0o755)
    (tmp_path / "uptime").write_text(f"{uptime}.42 17.00\n")
    script = tmp_path / "degraded"
    script.write_text(DEGRADED_RAID_SCRIPT)
    subprocess.run(["sh", str(script)], check=True, env={
        "PATH": f"{bin_dir}:/usr/bin:/bin", "CLONEFLEET_RUN": str(run),
        "CLONEFLEET_UPTIME": str(tmp_path / "uptime")})
    return log.read_text().splitlines() if log.exists() else []


def test_degraded_arrays_start_20_s_after_the_first_round_and_mdadm_count_stays_ahead(
        tmp_path: Path) -> None:
    from clonefleet.image.node import DEGRADED_AFTER_SECONDS

    assert run_degraded_script(tmp_path, 100) == []
    # Debian re-runs mdadm's script alone until its count reaches the seconds elapsed; a
    # count far ahead ends that loop at once, so every round also runs this script.
    count = int((tmp_path / "run" / "count.mdadm.initrd").read_text())
    assert count > 100_000
    assert run_degraded_script(tmp_path, 100 + DEGRADED_AFTER_SECONDS - 1) == []
    calls = run_degraded_script(tmp_path, 100 + DEGRADED_AFTER_SECONDS)
    assert calls[0].startswith("-q --run /dev/md")
    assert calls[1] == "-q --assemble --scan --run"


def test_root_wait_is_set_after_debians_sleep_unless_rootdelay_was_given(
        tmp_path: Path) -> None:
    import subprocess

    from clonefleet.image.node import ROOT_WAIT_SCRIPT, ROOT_WAIT_SECONDS

    script = tmp_path / "root-wait"
    script.write_text(ROOT_WAIT_SCRIPT)
    conf = tmp_path / "conf"
    conf.mkdir()
    subprocess.run(["sh", str(script)], check=True,
                   env={"PATH": "/usr/bin:/bin", "CLONEFLEET_CONF": str(conf), "ROOTDELAY": ""})
    assert (conf / "param.conf").read_text() == f"ROOTDELAY={ROOT_WAIT_SECONDS}\n"
    (conf / "param.conf").unlink()
    subprocess.run(["sh", str(script)], check=True,
                   env={"PATH": "/usr/bin:/bin", "CLONEFLEET_CONF": str(conf), "ROOTDELAY": "60"})
    assert not (conf / "param.conf").exists()


class Static:
    """A provider whose network is Hetzner's /32 (nothing private of its own)."""

    def network(self, node: Node) -> InitramfsNetwork:
        return InitramfsNetwork(mode="static", address="10.0.2.15", prefix=32,
                                gateway="10.0.2.2", onlink_gateway=True)


def test_the_fleet_files_private_address_joins_the_providers_network() -> None:
    node = Node(name="fsn-1", region="fsn", provider="robot", disks=("A",),
                private_address="10.99.0.101/24", private_interface="eth1")
    network = node_network(Static(), node)  # type: ignore[arg-type]
    assert (network.address, network.prefix, network.onlink_gateway) == ("10.0.2.15", 32, True)
    assert (network.private_address, network.private_interface) == ("10.99.0.101/24", "eth1")
    text = interfaces_text(network)
    assert "iface eth1 inet static\n    address 10.99.0.101/24\n" in text
    assert "address 10.0.2.15/32" in text

    other = Node(name="fsn-2", region="fsn", provider="robot", disks=("B",))
    plain = node_network(Static(), other)  # type: ignore[arg-type]
    assert plain.private_address == "" and "eth1" not in interfaces_text(plain)
