"""Health findings from the probe's output: each problem one finding an operator can act on."""

from __future__ import annotations

from clonefleet.health import parse

FSTAB = "fstab=/\nfstab=/boot\n"
MOUNTS = "mounted=/\nmounted=/boot\nmounted=/run\n"


def test_a_fully_booted_node_is_healthy() -> None:
    health = parse(f"state=running\nroot=rw,relatime,errors=remount-ro\n{FSTAB}{MOUNTS}")
    assert health.ok and health.state == "running" and health.findings == ()


def test_read_only_root_and_missing_boot_are_named_together() -> None:
    # What a boot whose fstab generator produced nothing looks like.
    health = parse(f"state=running\nroot=ro,relatime\n{FSTAB}mounted=/\nmounted=/run\n")
    assert health.findings == ("the root filesystem is mounted read-only",
                               "not mounted although in /etc/fstab: /boot")


def test_failed_units_are_listed_by_name() -> None:
    health = parse(f"state=degraded\nroot=rw\n{FSTAB}{MOUNTS}"
                   "failed=nftables.service\nfailed=chrony.service\n")
    assert health.findings == ("failed units: nftables.service, chrony.service",)
    assert health.failed_units == ("nftables.service", "chrony.service")


def test_unfinished_or_broken_boot_states_are_findings() -> None:
    assert parse(f"state=starting\nroot=rw\n{FSTAB}{MOUNTS}").findings == (
        "systemd reports the system as 'starting' (boot not finished)",)
    assert parse(f"state=maintenance\nroot=rw\n{FSTAB}{MOUNTS}").findings == (
        "systemd reports the system as 'maintenance'",)
    assert parse(f"state=degraded\nroot=rw\n{FSTAB}{MOUNTS}").findings == (
        "systemd reports the system as 'degraded'",)


def test_no_answer_at_all_is_not_healthy() -> None:
    health = parse("")
    assert not health.ok
    assert "cannot tell how / is mounted" in health.findings
