"""The lab driver's `power_on`: a stopped VM is started from its disk (the fix for a stopped
lab VM that no command could start), a running one is left alone; no VM is started here."""

from __future__ import annotations

from pathlib import Path

import pytest

from clonefleet.inventory import Node
from clonefleet.lab import qemu
from clonefleet.providers.lab import LabProvider

pytestmark = pytest.mark.unit

NODE = Node(name="n1", region="fsn", provider="lab", disks=("CFLAB-N1-A",))


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LabProvider, list[str]]:
    provider = LabProvider(tmp_path, log=lambda message: None)
    directory = tmp_path / "lab" / "n1"
    directory.mkdir(parents=True)
    qemu.VmConfig(name="n1", directory=directory, memory_mb=2048,
                  disks=[("CFLAB-N1-A", str(directory / "a.qcow2"))],
                  ssh_port=2201, dropbear_port=2202).save()
    started: list[str] = []
    monkeypatch.setattr(qemu, "stop", lambda config: None)
    monkeypatch.setattr(qemu, "start", lambda config, **options: started.append(config.name))
    monkeypatch.setattr(LabProvider, "accel", lambda self: "tcg")
    return provider, started


def test_power_on_starts_a_stopped_vm_from_its_disk(
        lab: tuple[LabProvider, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    provider, started = lab
    monkeypatch.setattr(qemu, "running_pid", lambda config: None)

    assert provider.power_on(NODE) is True

    assert started == ["n1"]
    assert (provider.root / "n1" / "mode").read_text() == "disk\n"


def test_power_on_leaves_a_running_vm_alone(
        lab: tuple[LabProvider, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    provider, started = lab
    monkeypatch.setattr(qemu, "running_pid", lambda config: 4242)

    assert provider.power_on(NODE) is False
    assert started == []
