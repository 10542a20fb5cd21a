"""Lab VMs with BIOS or UEFI firmware: the fleet key, vm.json, and qemu's command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fleet_text import FSN, FleetNode, fleet_toml

from clonefleet.errors import InventoryError, ProviderError
from clonefleet.inventory import load_fleet
from clonefleet.lab import qemu
from clonefleet.providers.lab import LabProvider

pytestmark = pytest.mark.unit

LAB = Path(__file__).resolve().parents[2] / "inventory" / "lab.toml"
FLEET = fleet_toml("f", "fleet.example.com", [FSN], [FleetNode("n1", "fsn", "CFLAB-N1-A")])


def _config(tmp_path: Path, firmware: str = "bios") -> qemu.VmConfig:
    config = qemu.VmConfig(name="n1", directory=tmp_path, memory_mb=2048,
                           disks=[("CFLAB-N1-A", str(tmp_path / "a.qcow2")),
                                  ("CFLAB-N1-B", str(tmp_path / "b.qcow2"))],
                           ssh_port=2201, dropbear_port=2202, firmware=firmware)
    (tmp_path / "smart.qcow2").write_bytes(b"")  # no qemu-img call in a unit test
    return config


@pytest.fixture
def ovmf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    folder = tmp_path / "OVMF"
    folder.mkdir()
    code, variables = folder / "OVMF_CODE_4M.fd", folder / "OVMF_VARS_4M.fd"
    code.write_bytes(b"code")
    variables.write_bytes(b"empty varstore")
    monkeypatch.setattr(qemu, "OVMF_CODE", code)
    monkeypatch.setattr(qemu, "OVMF_VARS", variables)
    return code, variables


def test_the_lab_fleet_boots_its_raid_node_uefi_and_the_others_bios() -> None:
    fleet = load_fleet(LAB)
    assert fleet.node("fsn-2").provider_settings == {"firmware": "uefi"}
    assert "firmware" not in fleet.node("fsn-1").provider_settings


def test_an_unknown_firmware_is_one_line_naming_the_key_and_the_choices(
        tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET + 'firmware = "efi"\n')
    with pytest.raises(InventoryError) as caught:
        load_fleet(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert caught.value.key == "nodes.n1.firmware"
    assert "'efi'" in caught.value.problem and "bios" in message and "uefi" in message
    assert 'firmware = "uefi"' in caught.value.fix


def test_firmware_is_a_lab_key_only(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET.replace('provider = "lab"', 'provider = "hetzner-robot"')
                    + 'ipv4 = "203.0.113.10"\nrobot_server = 1\nfirmware = "uefi"\n')
    with pytest.raises(InventoryError) as caught:
        load_fleet(path)
    assert caught.value.key == "nodes.n1.firmware" and "lab key" in caught.value.problem


def test_bios_vm_gets_no_firmware_flags(tmp_path: Path) -> None:
    argv = qemu.qemu_argv(_config(tmp_path), accel="tcg")
    assert not any("pflash" in arg for arg in argv)
    assert "-machine" not in argv and "-bios" not in argv


def test_uefi_vm_gets_ovmf_code_read_only_and_its_own_vars_copy(
        tmp_path: Path, ovmf: tuple[Path, Path]) -> None:
    code, _ = ovmf
    config = _config(tmp_path, "uefi")
    argv = qemu.qemu_argv(config, accel="tcg", kernel=tmp_path / "vmlinuz",
                          initrd=tmp_path / "rescue.cpio", append="console=ttyS0")
    drives = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-drive"
              and "pflash" in argv[i + 1]]
    assert drives == [f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                      f"if=pflash,format=raw,unit=1,file={tmp_path / 'OVMF_VARS.fd'}"]
    assert config.uefi_vars.read_bytes() == b"empty varstore"
    assert "-machine" not in argv  # the plain pc machine; non-secboot OVMF needs no SMM
    assert argv[argv.index("-kernel") + 1] == str(tmp_path / "vmlinuz")
    # The copy is made once: variables OVMF wrote survive the next start.
    config.uefi_vars.write_bytes(b"boot entries")
    qemu.qemu_argv(config, accel="tcg")
    assert config.uefi_vars.read_bytes() == b"boot entries"


def test_uefi_disk_boot_keeps_the_disks_boot_order(tmp_path: Path,
                                                  ovmf: tuple[Path, Path]) -> None:
    argv = qemu.qemu_argv(_config(tmp_path, "uefi"), accel="tcg", disks=["CFLAB-N1-B"])
    devices = [arg for arg in argv if arg.startswith("virtio-blk-pci")]
    assert devices == ["virtio-blk-pci,drive=disk1,serial=CFLAB-N1-B,bootindex=2"]
    assert "-kernel" not in argv


def test_missing_ovmf_is_one_line_naming_the_package(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "OVMF_CODE", tmp_path / "nowhere" / "OVMF_CODE_4M.fd")
    with pytest.raises(ProviderError) as caught:
        qemu.qemu_argv(_config(tmp_path, "uefi"), accel="tcg")
    message = str(caught.value)
    assert "\n" not in message and "OVMF_CODE_4M.fd" in message and "ovmf" in message
    assert "apt-get install ovmf" in message


def test_vm_json_round_trips_the_firmware_and_old_files_mean_bios(tmp_path: Path) -> None:
    config = _config(tmp_path, "uefi")
    config.save()
    assert qemu.VmConfig.load(tmp_path).firmware == "uefi"
    data = json.loads((tmp_path / "vm.json").read_text())
    del data["firmware"]  # a vm.json written before firmware existed
    (tmp_path / "vm.json").write_text(json.dumps(data))
    loaded = qemu.VmConfig.load(tmp_path)
    assert loaded.firmware == "bios" and loaded.disks == config.disks


def test_the_lab_provider_carries_the_fleet_key_into_vm_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clonefleet.providers.lab.subprocess.run",
                        lambda *args, **kwargs: None)  # qemu-img create
    monkeypatch.setattr(qemu, "running_pid", lambda config: None)
    fleet = load_fleet(LAB)
    provider = LabProvider(tmp_path, log=lambda message: None)
    info = provider.ensure_server(fleet.node("fsn-2"))
    assert info.details["firmware"] == "uefi"
    assert qemu.VmConfig.load(tmp_path / "lab" / "fsn-2").firmware == "uefi"
    provider.ensure_server(fleet.node("fsn-1"))
    assert qemu.VmConfig.load(tmp_path / "lab" / "fsn-1").firmware == "bios"
    # An existing VM follows the fleet file at its next start (the disks boot either way).
    bios = qemu.VmConfig.load(tmp_path / "lab" / "fsn-2")
    bios.firmware = "bios"
    bios.save()
    provider.ensure_server(fleet.node("fsn-2"))
    assert qemu.VmConfig.load(tmp_path / "lab" / "fsn-2").firmware == "uefi"


def test_the_rescue_build_names_install_tools_the_image_lacks(tmp_path: Path) -> None:
    from clonefleet.lab.rescue import INSTALL_TOOLS, missing_tools

    (tmp_path / "usr/sbin").mkdir(parents=True)
    for tool in INSTALL_TOOLS:
        if tool != "mkfs.vfat":
            (tmp_path / "usr/sbin" / tool).write_text("")
    assert missing_tools(tmp_path) == ["mkfs.vfat"]
    (tmp_path / "usr/sbin/mkfs.vfat").symlink_to("mkfs.fat")
    (tmp_path / "usr/sbin/mkfs.fat").write_text("")
    assert missing_tools(tmp_path) == []


def test_lab_boot_timeout_never_probes_and_is_longer_under_emulation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLONEFLEET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CLONEFLEET_ACCEL", raising=False)

    def no_probe(*args: object, **kwargs: object) -> str:
        raise AssertionError("boot_timeout must not boot a probe guest")

    monkeypatch.setattr(qemu, "probe_accel", no_probe)
    provider = LabProvider(tmp_path / "state")
    assert provider.boot_timeout == 1200.0  # unknown yet: assume emulation
    monkeypatch.setenv("CLONEFLEET_ACCEL", "kvm")
    assert provider.boot_timeout == 600.0
