"""The rollout's pure parsers (clonefleet.rollout.apt, .restarts) on real command outputs:
`apt-get -s -o Debug::NoLocking=1 dist-upgrade` / `upgrade` from a Debian 12 machine with
Debian's own suites (host-*.txt), and from a Debian 12 root pointed at the tests' signed
local repository (tests/apt_repo_fixture.py; chroot-*.txt), and needrestart's batch mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from clonefleet.rollout.apt import Source, parse_simulation, reboot_packages
from clonefleet.rollout.restarts import parse_needrestart, parse_reboot_flag

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures" / "rollout"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_debian_host_simulation_lists_every_inst_line_with_versions_and_sources() -> None:
    text = fixture("host-dist-upgrade.txt")
    simulation = parse_simulation(text)
    assert len(simulation.upgrades) == text.count("\nInst ")
    bash = next(upgrade for upgrade in simulation.upgrades if upgrade.name == "bash")
    assert (bash.old_version, bash.new_version, bash.architecture) == \
        ("5.2.15-2+b8", "5.2.15-2+b13", "amd64")
    assert bash.sources == (Source("Debian", "12.15", "oldstable"),)
    assert not bash.security


def test_a_package_in_both_the_point_release_and_security_counts_as_security() -> None:
    simulation = parse_simulation(fixture("host-dist-upgrade.txt"))
    gcrypt = next(upgrade for upgrade in simulation.upgrades if upgrade.name == "libgcrypt20")
    assert gcrypt.suites == ("oldstable", "oldstable-security")
    assert gcrypt.security
    assert str(gcrypt.sources[1]) == "Debian-Security:12/oldstable-security"


def test_trailing_broken_package_list_does_not_leak_into_the_architecture() -> None:
    simulation = parse_simulation(fixture("host-dist-upgrade.txt"))
    perl = next(upgrade for upgrade in simulation.upgrades if upgrade.name == "libperl5.36")
    assert perl.architecture == "amd64" and perl.new_version == "5.36.0-7+deb12u4"
    assert perl.security


def test_security_selection_keeps_only_security_sources() -> None:
    simulation = parse_simulation(fixture("host-dist-upgrade.txt"))
    selected = simulation.selected(everything=False)
    assert selected and len(selected) < len(simulation.upgrades)
    assert all(upgrade.security for upgrade in selected)
    assert simulation.selected(everything=True) == simulation.upgrades


def test_new_package_has_no_old_version_and_removals_are_listed() -> None:
    text = ("Inst linux-image-6.1.0-28-amd64 (6.1.119-1 Debian-Security:12/stable-security "
            "[amd64])\nRemv linux-image-6.1.0-9-amd64 [6.1.27-1]\n"
            "Conf linux-image-6.1.0-28-amd64 (6.1.119-1 Debian-Security:12/stable-security "
            "[amd64])\n")
    simulation = parse_simulation(text)
    assert [(upgrade.name, upgrade.old_version) for upgrade in simulation.upgrades] == \
        [("linux-image-6.1.0-28-amd64", None)]
    assert simulation.removals == ("linux-image-6.1.0-9-amd64",)
    assert reboot_packages(simulation.upgrades) == ("linux-image-6.1.0-28-amd64",)


@pytest.mark.parametrize("name, reboot", [
    ("linux-image-6.1.0-28-amd64", True), ("linux-image-amd64", True), ("libc6", True),
    ("systemd", True), ("udev", True), ("cryptsetup-initramfs", True),
    ("dropbear-initramfs", True), ("initramfs-tools-core", True), ("libc6-dev", False),
    ("linux-libc-dev", False), ("openssh-server", False), ("libsystemd-shared", False),
])
def test_reboot_packages_by_name(name: str, reboot: bool) -> None:
    simulation = parse_simulation(f"Inst {name} [1] (2 Debian-Security:12/stable-security "
                                  "[amd64])\n")
    assert bool(reboot_packages(simulation.upgrades)) is reboot


def test_debian_host_simulation_has_no_reboot_package_but_linux_libc_dev() -> None:
    simulation = parse_simulation(fixture("host-dist-upgrade.txt"))
    assert "linux-libc-dev" in {upgrade.name for upgrade in simulation.upgrades}
    assert reboot_packages(simulation.upgrades) == ()


def test_summary_text_without_inst_lines_is_nothing_to_do() -> None:
    text = ("Reading package lists...\nBuilding dependency tree...\nReading state "
            "information...\nCalculating upgrade...\n0 upgraded, 0 newly installed, 0 to remove "
            "and 0 not upgraded.\n")
    assert parse_simulation(text).upgrades == ()


def test_needrestart_missing_marker() -> None:
    parsed = parse_needrestart("NEEDRESTART-MISSING\n")
    assert not parsed.installed and parsed.services == ()


def test_needrestart_batch_lines() -> None:
    parsed = parse_needrestart(
        "NEEDRESTART-VER: 3.6\nNEEDRESTART-KCUR: 6.1.0-13-amd64\n"
        "NEEDRESTART-KEXP: 6.1.0-28-amd64\nNEEDRESTART-KSTA: 3\n"
        "NEEDRESTART-SVC: ssh.service\nNEEDRESTART-SVC: cron.service\n"
        "NEEDRESTART-SVC: ssh.service\n")
    assert parsed.installed and parsed.services == ("ssh.service", "cron.service")
    assert parsed.kernel_pending and parsed.kernel_description == "version upgrade pending"
    assert parsed.running_kernel == "6.1.0-13-amd64"


def test_reboot_flag() -> None:
    assert parse_reboot_flag("no\n").required is False
    flag = parse_reboot_flag("yes\nlinux-image-cftest\nlinux-image-cftest\n")
    assert flag.required and flag.packages == ("linux-image-cftest",)


def test_local_repository_simulation_without_release_version() -> None:
    simulation = parse_simulation(fixture("chroot-dist-upgrade.txt"))
    assert [(upgrade.name, upgrade.old_version, upgrade.new_version, upgrade.suites,
             upgrade.security) for upgrade in simulation.upgrades] == [
        ("cf-extra", "1.0", "1.1", ("stable-updates",), False),
        ("libcf1", None, "1.1", ("stable-security",), True),
        ("cf-tool", "1.0", "1.1", ("stable-security",), True),
        ("linux-image-cftest", "1.0", "2.0", ("stable-security",), True)]
    assert simulation.upgrades[1].sources == (Source("Debian-Security", "", "stable-security"),)
    assert reboot_packages(simulation.selected(everything=False)) == ("linux-image-cftest",)


def test_plain_upgrade_keeps_back_an_upgrade_that_needs_a_new_package() -> None:
    # Why the plan simulates dist-upgrade: `upgrade` leaves cf-tool (it needs the new libcf1)
    # out, as it leaves a new kernel ABI package out.
    names = {upgrade.name for upgrade in parse_simulation(fixture("chroot-upgrade.txt")).upgrades}
    assert names == {"cf-extra", "linux-image-cftest"}


def test_needrestart_in_a_root_with_no_kernel_reports_nothing_pending() -> None:
    parsed = parse_needrestart(fixture("chroot-needrestart.txt"))
    assert parsed.installed and parsed.services == ()
    assert parsed.kernel_status == "0" and not parsed.kernel_pending
    assert parsed.running_kernel == "6.18.44-fc-v782"


def test_reboot_required_pkgs_written_by_the_test_kernel_postinst() -> None:
    flag = parse_reboot_flag("yes\n" + fixture("chroot-reboot-required.pkgs"))
    assert flag.packages == ("linux-image-cftest",)
