"""Health findings from the probe's output: each problem one finding an operator can act on."""

from __future__ import annotations

from typing import Any, cast

from clonefleet.health import check, parse
from clonefleet.ssh import RemoteShell

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


def test_failed_units_are_listed_by_name_with_how_they_failed() -> None:
    health = parse(f"state=degraded\nroot=rw\n{FSTAB}{MOUNTS}"
                   "failed=nftables.service exit-code\nfailed=dev-mqueue.mount timeout\n")
    assert health.findings == (
        "failed units: nftables.service (exit-code), dev-mqueue.mount (timeout)",)
    assert health.failed_units == ("nftables.service", "dev-mqueue.mount")
    assert health.failed_results == {"nftables.service": "exit-code",
                                     "dev-mqueue.mount": "timeout"}


class ScriptedShell:
    """Answers the health probe with prepared outputs, in order, and records every command."""

    def __init__(self, *probe_outputs: str) -> None:
        self.outputs = list(probe_outputs)
        self.commands: list[str] = []

    def run(self, command: str, **_: Any) -> tuple[int, str, str]:
        self.commands.append(command)
        if command.startswith("sh -c"):
            return 0, self.outputs.pop(0), ""
        return 0, "", ""


def test_units_that_only_timed_out_are_restarted_once_and_the_node_probed_again() -> None:
    boot = (f"state=degraded\nroot=rw\n{FSTAB}{MOUNTS}failed=dev-mqueue.mount timeout\n"
            "failed=cf-broken.service exit-code\n")
    after = f"state=degraded\nroot=rw\n{FSTAB}{MOUNTS}failed=cf-broken.service exit-code\n"
    shell = ScriptedShell(boot, after)
    health = check(cast(RemoteShell, shell))
    restarts = [command for command in shell.commands if "systemctl restart" in command]
    assert len(restarts) == 1 and "dev-mqueue.mount" in restarts[0]
    assert "cf-broken.service" not in restarts[0]
    assert health.restarted == ("dev-mqueue.mount",)
    assert health.findings == ("failed units: cf-broken.service (exit-code)",)


def test_a_unit_that_times_out_again_stays_a_finding() -> None:
    boot = f"state=degraded\nroot=rw\n{FSTAB}{MOUNTS}failed=slow.service timeout\n"
    shell = ScriptedShell(boot, boot)
    health = check(cast(RemoteShell, shell))
    assert health.restarted == ()
    assert health.findings == ("failed units: slow.service (timeout)",)


def test_a_healthy_node_is_probed_once_and_nothing_is_restarted() -> None:
    shell = ScriptedShell(f"state=running\nroot=rw\n{FSTAB}{MOUNTS}")
    assert check(cast(RemoteShell, shell)).ok
    assert len(shell.commands) == 1


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


def test_an_fstab_entry_left_unmounted_at_boot_is_mounted_once_and_the_node_probed_again(
        ) -> None:
    boot = f"state=running\nroot=rw\n{FSTAB}mounted=/\nmounted=/run\n"
    shell = ScriptedShell(boot, f"state=running\nroot=rw\n{FSTAB}{MOUNTS}")
    health = check(cast(RemoteShell, shell))
    assert [command for command in shell.commands if " mount " in f" {command}"] == [
        "timeout 120 mount /boot"]
    assert health.ok and health.remounted == ("/boot",)


def test_an_fstab_entry_that_does_not_mount_again_stays_a_finding() -> None:
    boot = f"state=running\nroot=rw\n{FSTAB}mounted=/\nmounted=/run\n"
    health = check(cast(RemoteShell, ScriptedShell(boot, boot)))
    assert health.remounted == ()
    assert health.findings == ("not mounted although in /etc/fstab: /boot",)
