"""The operator's side of unlockd: `unlock --approve`, `power reset` announcing an expected
reboot, `keys unlocker-key|grant|unlockers|revoke`, and `unlockd`'s option errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.cli import _register, cli
from clonefleet.inventory import Node
from clonefleet.state import open_store
from clonefleet.unlockd import boots
from clonefleet.unlockers import UnlockerPassphrases, fleet_keystore

pytestmark = pytest.mark.unit

FLEET = fleet_toml("unlocktest", "unlock.clonefleet.test", [FSN],
                   [FleetNode("fsn-1", "fsn", "S-FSN1", ipv4="192.0.2.1")],
                   unlock={"unexpected": "approve"})

_register()


class Resetter:
    name = "lab"

    def reset(self, node: Node) -> None:
        pass

    def power_off(self, node: Node) -> None:
        pass


class Lab:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp_path
        self.fleet = tmp_path / "fleet.toml"
        self.fleet.write_text(FLEET)
        self.state = tmp_path / "state"
        self.store = open_store(self.state / "unlocktest")
        self.age_key = tmp_path / "age.key"

        def factory(*args: Any) -> Callable[[Node], Resetter]:
            return lambda node: Resetter()

        monkeypatch.setattr("clonefleet.cli.power.provider_factory", factory)

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--fleet", str(self.fleet), *args],
                                  env={"CLONEFLEET_STATE_DIR": str(self.state),
                                       "CLONEFLEET_AGE_KEY": str(self.age_key)})


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    return Lab(tmp_path, monkeypatch)


def test_unlock_approve_records_an_approval_and_unlocks_nothing_itself(lab: Lab) -> None:
    result = lab.run("unlock", "--approve", "fsn-1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "fsn-1: unlock approved; unlockd unlocks its current boot"
    approved = boots.approval_at(lab.store, "fsn-1")
    assert approved is not None
    assert "clonefleet unlock --approve" in lab.store.get_fact("fsn-1", boots.APPROVAL)["by"]


def test_power_reset_announces_an_expected_reboot_and_power_off_does_not(lab: Lab) -> None:
    lab.store.set_state("fsn-1", "drained", actor="test")
    assert lab.run("power", "off", "fsn-1").exit_code == 0
    assert lab.store.get_fact("fsn-1", boots.EXPECTED_REBOOT) is None
    assert lab.run("power", "reset", "fsn-1").exit_code == 0
    assert lab.store.get_fact("fsn-1", boots.EXPECTED_REBOOT)["by"] == "clonefleet power reset"


def test_unlocker_key_grant_list_and_revoke(lab: Lab) -> None:
    keystore = fleet_keystore(lab.state / "unlocktest", lab.store, lab.age_key)
    passphrase = keystore.create("fsn-1")
    identity = lab.tmp / "unlocker" / "u1.key"

    made = lab.run("keys", "unlocker-key", str(identity))
    assert made.exit_code == 0, made.output
    assert made.stdout.startswith("ssh-ed25519 ")
    assert oct(identity.stat().st_mode & 0o777) == "0o600"
    assert lab.run("keys", "unlocker-key", str(identity)).exit_code == 2  # never overwritten

    granted = lab.run("keys", "grant", "u1", str(identity) + ".pub")
    assert granted.exit_code == 0, granted.output
    assert granted.stdout.strip() == "unlocker u1: granted; 1 passphrase(s) re-encrypted to it"
    assert UnlockerPassphrases(lab.store, identity).get("fsn-1") == passphrase

    listed = json.loads(lab.run("--json", "keys", "unlockers").stdout)
    assert [(entry["name"], entry["status"]) for entry in listed["unlockers"]] == [
        ("u1", "granted")]

    revoked = lab.run("keys", "revoke", "u1")
    assert revoked.exit_code == 0, revoked.output
    assert "re-encrypted without it" in revoked.stdout
    assert keystore.get("fsn-1") == passphrase


def test_grant_of_a_bad_key_is_one_line_naming_the_fix(lab: Lab) -> None:
    result = lab.run("keys", "grant", "u1", "ssh-rsa AAAAB3NzaC1yc2E")
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "not an ssh-ed25519 public key" in line and "keys unlocker-key" in line


def test_unlockd_state_without_identity_is_refused_in_one_line(lab: Lab) -> None:
    result = lab.run("unlockd", "--once", "--state", "etcd://127.0.0.1:2379/clonefleet/x")
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "needs both --state and --identity" in line


def test_unlockd_loopback_as_is_an_address_for_unlocker_mode_only(lab: Lab) -> None:
    result = lab.run("unlockd", "--once", "--loopback-as", "qemu-gateway", "--state",
                     "etcd://127.0.0.1:2379/clonefleet/x", "--identity", "/nonexistent")
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "'qemu-gateway' is not an IP address" in line and "10.0.2.2" in line
    result = lab.run("unlockd", "--once", "--loopback-as", "10.0.2.2")
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "--loopback-as is for unlocker mode" in line


def test_unlockd_once_on_the_controller_with_nothing_to_watch_publishes_the_policy(
        lab: Lab) -> None:
    result = lab.run("--json", "unlockd", "--once")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"nodes": []}
    from clonefleet.unlockd.service import published_config

    policy, regions, _ = published_config(lab.store)
    assert policy.for_region("fsn").unexpected == "approve"
    assert regions == {"fsn-1": "fsn"}


def test_status_live_says_what_unlockd_recorded_of_the_boot_a_node_waits_in(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    from clonefleet.liveprobe import LiveStatus

    lab.store.set_state("fsn-1", "deployed", actor="test")
    boot, _ = boots.saw_initramfs(lab.store, "fsn-1", 1000.0)
    assert boot is not None
    boots.update_boot(lab.store, "fsn-1", boot.marker, status=boots.HELD)

    def probe_fleet(store: object, names: list[str], *args: Any, **options: Any
                    ) -> list[LiveStatus]:
        return [LiveStatus(name, "initramfs", "Dropbear answers with the pinned key: waiting "
                                              "for unlock") for name in names]

    monkeypatch.setattr("clonefleet.liveprobe.probe_fleet", probe_fleet)
    [row] = json.loads(lab.run("--json", "status", "--live").stdout)
    assert row["live"]["unlockd"] == {"boot": "1000000", "status": "held", "expected": False}
    assert row["live"]["detail"].endswith(
        "; unlockd: boot 1000000 held (`clonefleet unlock --approve fsn-1`)")
