"""`clonefleet retire NODE` (the server goes first, and only then the node's secrets) and
`clonefleet lab destroy`, which forgets the same things."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.cli import _register, cli
from clonefleet.errors import ProviderError, StateError
from clonefleet.inventory import Node, load_fleet
from clonefleet.keystore import Keystore
from clonefleet.known_hosts import HostKeyEntry, fleet_known_hosts
from clonefleet.lab import qemu
from clonefleet.retire import plan_retire, retire
from clonefleet.ssh import generate_ed25519
from clonefleet.state import open_store

pytestmark = pytest.mark.unit

FLEET = fleet_toml("retiretest", "retire.clonefleet.test", [replace(FSN, min_active=0)],
                   [FleetNode("fsn-1", "fsn", "S-FSN1"), FleetNode("fsn-2", "fsn", "S-FSN2")],
                   settings={"min_active_total": 0})

_register()


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A provisioned-looking lab node: VM folder, keystore passphrase, facts, state."""
    (tmp_path / "fleet.toml").write_text(FLEET)
    state = tmp_path / "state" / "retiretest"
    monkeypatch.setenv("CLONEFLEET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLONEFLEET_AGE_KEY", str(tmp_path / "age.key"))
    stopped: list[str] = []
    monkeypatch.setattr(qemu, "stop", lambda config, timeout=10: stopped.append(config.name))
    vm = state / "lab" / "fsn-1"
    vm.mkdir(parents=True)
    qemu.VmConfig(name="fsn-1", directory=vm, memory_mb=2048, disks=[("S-FSN1", "x")],
                  ssh_port=1, dropbear_port=2).save()
    keystore = Keystore(state / "keystore")
    keystore.create("fsn-1")
    store = open_store(state)
    store.set_state("fsn-1", "deployed", actor="test")
    store.set_fact("fsn-1", "server_id", "lab-fsn-1")
    store.set_fact("fsn-1", "ssh_host_key", "ssh-ed25519 AAAA")
    return {"fleet": tmp_path / "fleet.toml", "state": state, "vm": vm, "stopped": stopped,
            "keystore": keystore, "store": store}


def invoke(lab: dict[str, object], *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["--fleet", str(lab["fleet"]), *args])


def test_retire_without_yes_refuses_in_one_line_and_touches_nothing(
        lab: dict[str, object]) -> None:
    result = invoke(lab, "retire", "fsn-1")
    assert result.exit_code == 2
    assert result.output.startswith("error: retire fsn-1 deletes its lab server")
    assert len(result.output.strip().splitlines()) == 1 and "--yes" in result.output
    assert (lab["vm"] / "vm.json").exists()  # type: ignore[operator]
    assert lab["keystore"].has("fsn-1")  # type: ignore[attr-defined]


def test_dry_run_says_what_would_happen(lab: dict[str, object]) -> None:
    result = invoke(lab, "retire", "fsn-1", "--dry-run")
    assert result.exit_code == 0
    assert "fsn-1 (lab server lab-fsn-1, now deployed) would be retired: delete server" \
        in result.output
    data = json.loads(invoke(lab, "--json", "retire", "fsn-1", "--dry-run").output)
    assert data["steps"][0] == "delete server" and data["done"] is False
    assert data["server_id"] == "lab-fsn-1" and data["state"] == "deployed"
    assert lab["stopped"] == [] and lab["keystore"].has("fsn-1")  # type: ignore[attr-defined]


def test_retire_deletes_the_vm_then_forgets_passphrase_and_facts(
        lab: dict[str, object]) -> None:
    result = invoke(lab, "--json", "retire", "fsn-1", "--yes")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["done"] is True and data["node"] == "fsn-1"
    assert lab["stopped"] == ["fsn-1"]
    assert not lab["vm"].exists()  # type: ignore[attr-defined]
    assert not lab["keystore"].has("fsn-1")  # type: ignore[attr-defined]
    store = lab["store"]
    assert store.facts("fsn-1") == {}  # type: ignore[attr-defined]
    record = store.get("fsn-1")  # type: ignore[attr-defined]
    assert record.state == "retired" and record.actor == "clonefleet retire"
    assert "lab server lab-fsn-1 deleted" in record.reason
    again = invoke(lab, "retire", "fsn-1", "--yes")
    assert again.exit_code == 0 and "already retired" in again.output


def test_a_provider_that_cannot_delete_leaves_everything_in_place(
        lab: dict[str, object]) -> None:
    class Robot:
        name = "hetzner-robot"

        def delete(self, node: Node) -> None:
            raise ProviderError(f"{node.name}: Robot servers are cancelled in the Robot "
                                "console, not by clonefleet")

    fleet = load_fleet(lab["fleet"])  # type: ignore[arg-type]
    store, keystore = lab["store"], lab["keystore"]
    with pytest.raises(ProviderError, match="cancelled in the Robot console"):
        retire(fleet, store, Robot(), keystore, "fsn-1", log=lambda m: None)  # type: ignore[arg-type]
    assert keystore.has("fsn-1")  # type: ignore[attr-defined]
    assert store.get_fact("fsn-1", "ssh_host_key") == "ssh-ed25519 AAAA"  # type: ignore[attr-defined]
    assert store.get("fsn-1").state == "deployed"  # type: ignore[attr-defined]


def test_a_node_in_dns_answers_must_be_drained_first(lab: dict[str, object]) -> None:
    store = lab["store"]
    store.set_state("fsn-1", "active", actor="test")  # type: ignore[attr-defined]
    fleet = load_fleet(lab["fleet"])  # type: ignore[arg-type]
    with pytest.raises(StateError, match="drain it first"):
        plan_retire(fleet, store, "fsn-1")  # type: ignore[arg-type]
    result = invoke(lab, "retire", "fsn-1", "--yes")
    assert result.exit_code == 3 and lab["stopped"] == []


def test_a_node_never_provisioned_can_be_retired(lab: dict[str, object]) -> None:
    result = invoke(lab, "retire", "fsn-2", "--yes")
    assert result.exit_code == 0, result.output
    assert lab["store"].get("fsn-2").state == "retired"  # type: ignore[attr-defined]
    assert "lab server (none recorded) deleted" in result.output


def _pin(state: Path, node: str, port: int) -> HostKeyEntry:
    key = " ".join(generate_ed25519().public_line.split()[:2])
    entry = HostKeyEntry(node=node, role="sshd", host="127.0.0.1", port=port, key=key)
    fleet_known_hosts(state).replace_node(node, [entry])
    return entry


def test_retire_and_lab_destroy_forget_the_nodes_pinned_host_keys(
        lab: dict[str, object]) -> None:
    # A later server on the same address must not be checked against (or trusted by) the
    # old node's keys; the other nodes' pins stay.
    state = lab["state"]
    assert isinstance(state, Path)
    _pin(state, "fsn-1", 10022)
    kept = _pin(state, "fsn-2", 10023)
    result = invoke(lab, "retire", "fsn-1", "--yes")
    assert result.exit_code == 0, result.output
    assert "host keys" in result.output
    assert fleet_known_hosts(state).entries() == [kept]

    vm = state / "lab" / "fsn-2"
    vm.mkdir(parents=True)
    qemu.VmConfig(name="fsn-2", directory=vm, memory_mb=2048, disks=[("S-FSN2", "x")],
                  ssh_port=3, dropbear_port=4).save()
    lab["keystore"].create("fsn-2")  # type: ignore[attr-defined]
    lab["store"].set_state("fsn-2", "deployed", actor="test")  # type: ignore[attr-defined]
    result = invoke(lab, "--json", "lab", "destroy", "fsn-2")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"destroyed": ["fsn-2"]}
    assert fleet_known_hosts(state).entries() == []
    assert not vm.exists() and lab["stopped"] == ["fsn-1", "fsn-2"]
    assert not lab["keystore"].has("fsn-2")  # type: ignore[attr-defined]
    assert lab["store"].get("fsn-2").state == "ordered"  # type: ignore[attr-defined]


def test_lab_destroy_without_names_or_all_is_one_line(lab: dict[str, object]) -> None:
    result = invoke(lab, "lab", "destroy")
    assert result.exit_code == 2
    assert result.output.strip() == "error: name the lab VMs to destroy, or pass --all"
