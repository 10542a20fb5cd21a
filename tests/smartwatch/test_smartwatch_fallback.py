"""Readings that pySMART cannot parse: older smartctl layouts, locale-formatted numbers,
vendor-packed raw values; the exit status, health line and identity survive, and
`smartctl --json` fills in the rest."""

from __future__ import annotations

import pytest
from smartwatch_replay import FIRST_CHECK, ReplayedMachine, first_check

from smartwatch import rawvalues
from smartwatch.collect import EXIT_STATUS, RecordingSmartctl, read_device
from smartwatch.policy import (
    CRITICAL,
    WARNING,
    PolicyConfig,
    advance_counters,
    evaluate,
)

pytestmark = pytest.mark.unit

NOW = FIRST_CHECK


def test_failed_health_survives_a_smartctl5_output_pysmart_cannot_parse(
    machine: ReplayedMachine,
) -> None:
    [reading], findings = first_check(machine, "failed_unparsed_smartctl5")
    # pySMART raised, smartctl 5.39 knows no --json: only the text and the exit status remain.
    assert reading.parse_error.startswith("StopIteration at pySMART/")
    assert reading.source == ""
    assert reading.smartctl_exit_status == 216
    assert (reading.model, reading.serial) == ("ST3250318AS", "9VY1LMLV")
    by_check = {f.check: f for f in findings}
    assert {check: f.severity for check, f in by_check.items()} == {
        "unreadable": WARNING, "overall_health": CRITICAL, "prefail_now": CRITICAL,
        "selftest": CRITICAL}
    assert by_check["overall_health"].source == "smartctl-text"
    assert by_check["prefail_now"].source == EXIT_STATUS
    assert by_check["selftest"].source == EXIT_STATUS
    unreadable = by_check["unreadable"].reason
    assert "ST3250318AS serial 9VY1LMLV (/dev/sda)" in unreadable
    assert "StopIteration at pySMART/" in unreadable
    assert "UNRECOGNIZED OPTION: json" in unreadable
    assert "unknown" not in " ".join(f.reason for f in findings)


def test_unparsable_text_falls_back_to_smartctl_json_for_attributes_and_selftests(
    machine: ReplayedMachine,
) -> None:
    [reading], findings = first_check(machine, "failed_unparsed_json")
    assert reading.source == "smartctl-json" and reading.error == ""
    assert reading.parse_error.startswith("StopIteration")
    assert reading.smartctl_exit_status == 216
    assert reading.power_on_hours == 4804 and reading.temperature == 38
    # Seagate's packed 188 is decoded from the JSON's 48-bit value: 0x43_0044_00c4 → 196.
    assert reading.attributes[188].raw_value == 196
    assert {(f.check, f.severity, f.source) for f in findings} == {
        ("overall_health", CRITICAL, "smartctl-text"),
        ("ata_5_failing_now", CRITICAL, "smartctl-json"),
        ("ata_5", CRITICAL, "smartctl-json"),
        ("ata_187", CRITICAL, "smartctl-json"),
        ("ata_188", WARNING, "smartctl-json"),
        ("selftest", CRITICAL, "smartctl-json"),
    }
    selftest = next(f for f in findings if f.check == "selftest")
    assert "Completed: unknown failure" in selftest.reason


def test_json_call_is_made_only_when_pysmart_fails(machine: ReplayedMachine) -> None:
    first_check(machine, "healthy_sata_hdd")
    assert not [call for call in machine.calls() if "--json" in call]
    first_check(machine, "failed_unparsed_json")
    assert "-d sat --json --all /dev/sda" in machine.calls()


def test_smartctl_runs_under_lc_all_c_whatever_the_environment(
    machine: ReplayedMachine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LC_ALL", "de_CH.UTF-8")
    monkeypatch.setenv("LC_NUMERIC", "de_CH.UTF-8")
    [reading], findings = first_check(machine, "nvme_locale")
    assert reading.source == "pysmart" and reading.parse_error == ""
    assert reading.capacity_bytes == 256_060_514_304
    assert reading.power_on_hours == 10188
    assert reading.nvme is not None and reading.nvme.error_log_entries == 2888
    assert findings == []


class PassEnvironmentSmartctl(RecordingSmartctl):
    """pySMART's own way of running smartctl: the environment passes through unchanged."""

    def _exec(self, cmd: list[str]) -> tuple[list[str], int]:
        import subprocess

        process = subprocess.run(cmd, capture_output=True, check=False)
        return self._decode_output(process.stdout), process.returncode


def test_locale_formatted_output_that_pysmart_rejects_is_read_from_json(
    machine: ReplayedMachine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LC_ALL", "de_CH.UTF-8")
    machine.use("nvme_locale")
    reading = read_device(PassEnvironmentSmartctl(str(machine.smartctl)), "/dev/nvme0", "nvme")
    # The text had "1’639": pySMART's NVMe parser raised on it; the JSON has plain numbers.
    assert reading.parse_error.startswith("ValueError: invalid literal for int()")
    assert "1’639" in reading.parse_error
    assert reading.source == "smartctl-json" and reading.error == ""
    assert (reading.model, reading.serial) == ("KBG30ZMV256G TOSHIBA", "68APC048P12P")
    assert reading.nvme is not None and reading.nvme.available_spare_threshold == 10
    assert reading.power_on_hours == 10188
    assert evaluate(reading, advance_counters({}, reading, NOW), PolicyConfig(), NOW) == []


def test_seagate_packed_raw_values_become_real_counts(machine: ReplayedMachine) -> None:
    [reading], findings = first_check(machine, "seagate_packed_smartctl6")
    assert reading.source == "pysmart"
    assert reading.attributes[188].raw == "4295032904"
    assert reading.attributes[188].raw_value == 72
    assert reading.attributes[1].raw_value == 3  # errors, not the 32-bit operation count
    assert reading.attributes[7].raw_value == 0
    assert [(f.check, f.reason) for f in findings] == [
        ("ata_188", "Disk ST2000NM000A-2J2100 serial WS10SM2A (/dev/sda): command timeouts "
                    "(SMART 188) grew from 0 to 72 (at its first check).")]


@pytest.mark.parametrize(("attribute", "raw", "raw48", "expected"), [
    (188, "4295032904", None, 72),          # plain 48-bit number: the low word
    (188, "1 1 72", None, 72),              # smartctl's raw16 preset already applied
    (188, "1 1 72", 4295032904, 72),        # smartctl --json: the 48-bit value decides
    (1, "13033252720", None, 3),            # raw24/raw32: errors above the operation count
    (1, "3/148350832", None, 3),            # preset already applied
    (9, "1380", None, 1380),                # not packed
    (194, "31 (0 22 0 0 0)", 94489280543, 31),  # not packed: the printed value, not raw48
])
def test_seagate_presets_decode_either_way_smartctl_printed_them(
    attribute: int, raw: str, raw48: int | None, expected: int,
) -> None:
    assert rawvalues.count(attribute, raw, raw48, rawvalues.presets_for("ST3000DM001")) == \
        expected


def test_packed_presets_apply_to_seagate_drives_only() -> None:
    assert rawvalues.presets_for("ST2000NM000A-2J2100") == rawvalues.SEAGATE_PRESETS
    assert rawvalues.presets_for("ST3250318AS", "Seagate Barracuda 7200.12")
    assert rawvalues.presets_for("WDC WD10TMVW-11ZSMS1") == {}
    assert rawvalues.count(188, "4295032904", None, {}) == 4295032904


def test_json_reader_agrees_with_pysmart_on_a_real_smartctl_73_disk(
    machine: ReplayedMachine,
) -> None:
    from smartwatch import smartjson
    from smartwatch.collect import DiskReading

    # qemu's emulated AHCI disk, recorded with the lab's rescue system (smartctl 7.3).
    [text], findings = first_check(machine, "qemu_ahci_disk")
    assert findings == [] and text.source == "pysmart"
    output = (machine.folder / "_-d_sat_--json_--all__dev_sda").read_text().splitlines()
    json_reading = DiskReading(device="/dev/sda", interface="sat")
    smartjson.fill(json_reading, smartjson.parse(output))
    for name in ("model", "serial", "firmware", "capacity_bytes", "temperature",
                 "power_on_hours", "overall_health", "smart_capable"):
        assert getattr(json_reading, name) == getattr(text, name), name
    assert {key: a.raw_value for key, a in json_reading.attributes.items()} == \
        {key: a.raw_value for key, a in text.attributes.items()}
    assert (json_reading.model, json_reading.serial) == ("QEMU HARDDISK", "CFLAB-SMART-sw7probe")
