"""Where `provision` resumes, judged from the recorded lifecycle state (no VM is started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clonefleet.errors import StateError
from clonefleet.inventory import load_fleet
from clonefleet.keystore import Keystore
from clonefleet.providers.lab import LabProvider
from clonefleet.provision import Provisioner
from clonefleet.state import SqliteStateStore

pytestmark = pytest.mark.unit
LAB = Path(__file__).resolve().parents[2] / "inventory" / "lab.toml"


def provisioner(tmp_path: Path) -> Provisioner:
    store = SqliteStateStore(tmp_path / "state.sqlite")
    return Provisioner(load_fleet(LAB), store, tmp_path, LabProvider(tmp_path, log=print),
                       Keystore(tmp_path / "ks", tmp_path / "age.key"), log=lambda _: None)


@pytest.mark.parametrize(("state", "steps"), [
    (None, ["create server", "boot rescue", "build node layer", "install", "boot from disk",
            "unlock", "health check", "deploy"]),
    ("rescue", ["create server", "boot rescue", "build node layer", "install",
                "boot from disk", "unlock", "health check", "deploy"]),
    ("installed", ["boot from disk", "unlock", "health check", "deploy"]),
    ("locked", ["unlock", "health check", "deploy"]),
    ("booted", ["health check", "deploy"]),
])
def test_provision_resumes_from_the_recorded_state(tmp_path: Path, state: str | None,
                                                   steps: list[str]) -> None:
    prov = provisioner(tmp_path)
    if state:
        prov.store.set_state("fsn-1", state, actor="test")
    plan = prov.plan("fsn-1")
    assert plan["steps"] == steps
    assert ("install" in plan) == ("install" in steps)


def test_installed_node_is_never_wiped_without_wipe(tmp_path: Path) -> None:
    prov = provisioner(tmp_path)
    prov.store.set_state("fsn-1", "deployed", actor="test")
    assert prov.plan("fsn-1")["steps"] == []
    report = prov.provision("fsn-1")
    assert report.skipped and report.final_state == "deployed" and report.steps == []
    wiped = prov.plan("fsn-1", wipe=True)
    assert wiped["steps"][:4] == ["create server", "boot rescue", "build node layer", "install"]
    assert "disks will be erased" in wiped["warning"]


def test_dry_run_plan_creates_no_operator_key_and_no_vm(tmp_path: Path) -> None:
    prov = provisioner(tmp_path)
    prov.plan("fsn-2")
    assert not (tmp_path / "id_ed25519").exists()
    assert prov.provider.list() == []


def test_retired_node_is_refused(tmp_path: Path) -> None:
    prov = provisioner(tmp_path)
    prov.store.set_state("fsn-1", "retired", actor="test")
    with pytest.raises(StateError, match="retired"):
        prov.provision("fsn-1")
