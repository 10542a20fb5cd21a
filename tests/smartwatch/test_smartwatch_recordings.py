"""Recorded smartctl outputs of real drive models, replayed through pySMART, judged by policy."""

from __future__ import annotations

import pytest
from smartwatch_replay import ReplayedMachine, first_check

from smartwatch.policy import CRITICAL, WARNING

pytestmark = pytest.mark.unit

@pytest.mark.parametrize(
    ("recording", "model", "serial", "firmware", "capacity", "temperature", "hours"),
    [
        ("healthy_sata_hdd", "ST2000NM000A-2J2100", "WS10SM2A", "TN03", 2_000_398_934_016,
         31, 1380),
        ("healthy_sata_ssd", "Apacer AS340 240GB", "LKC125R001176", "V4.25.0",
         240_057_409_536, 47, 3517),
        ("healthy_nvme", "KLEVV CRAS C910 Lite M.2 NVMe SSD 1TB", "C91LD1N40ANA03637",
         "ELFMH0.1", 1_024_209_543_168, 30, 71),
        ("healthy_nvme_smartctl75", "TWSC TSC3AN1T0-F2T60S", "TTSQA253HX07141", "SN13076",
         1_024_209_543_168, 43, 396),
        # SAS drives report power-on time only in a log this recording does not have.
        ("healthy_sas_hdd", "HUH721212AL4204", "8DG3J2ZD", "C3D0", 12_000_138_625_024, 32,
         None),
    ],
)
def test_healthy_recording_is_read_fully_and_yields_no_finding(
    machine: ReplayedMachine, recording: str, model: str, serial: str, firmware: str,
    capacity: int, temperature: int, hours: int | None,
) -> None:
    readings, findings = first_check(machine, recording)
    assert len(readings) == 1
    reading = readings[0]
    assert (reading.model, reading.serial, reading.firmware) == (model, serial, firmware)
    assert reading.capacity_bytes == capacity
    assert reading.temperature == temperature
    assert reading.power_on_hours == hours
    assert reading.overall_health == "PASSED"
    assert findings == []


def test_sata_ssd_model_comes_from_device_model_line_not_add_product_id(
    machine: ReplayedMachine,
) -> None:
    # pySMART 1.4.3 alone reports "mavlsata" from smartctl 7.3's "Add. Product Id:" line.
    readings, _ = first_check(machine, "healthy_sata_ssd")
    assert readings[0].model == "Apacer AS340 240GB"


def test_healthy_hdd_reads_attributes_and_selftest_log(machine: ReplayedMachine) -> None:
    readings, _ = first_check(machine, "healthy_sata_hdd")
    reading = readings[0]
    assert reading.attributes[5].raw_value == 0
    assert reading.attributes[194].raw_value == 31
    assert [test.status for test in reading.selftests] == ["Completed without error"] * 2


def test_nvme_health_log_is_read_with_the_drives_own_temperature_thresholds(
    machine: ReplayedMachine,
) -> None:
    readings, _ = first_check(machine, "healthy_nvme")
    nvme = readings[0].nvme
    assert nvme is not None
    assert (nvme.critical_warning, nvme.available_spare, nvme.available_spare_threshold) == \
        (0, 100, 5)
    assert (nvme.warning_temperature, nvme.critical_temperature) == (83, 85)


def test_reallocated_and_pending_sectors_with_failed_selftest_are_found(
    machine: ReplayedMachine,
) -> None:
    _, findings = first_check(machine, "failing_sectors_selftest")
    assert {(f.check, f.severity) for f in findings} == {
        ("ata_5", WARNING), ("ata_197", CRITICAL), ("selftest", CRITICAL)}
    reasons = " ".join(f.reason for f in findings)
    assert "WDC WD10TMVW-11ZSMS1 serial WD-WXK1A11P5834" in reasons
    assert "pending sectors (SMART 197) grew from 0 to 129" in reasons
    assert "Completed: read failure" in reasons


def test_failed_overall_health_is_critical_and_names_model_and_serial(
    machine: ReplayedMachine,
) -> None:
    _, findings = first_check(machine, "failed_overall")
    by_check = {f.check: f for f in findings}
    assert by_check["overall_health"].severity == CRITICAL
    assert "ST3250318AS serial 9VY1LMLV" in by_check["overall_health"].reason
    assert by_check["ata_5_failing_now"].severity == CRITICAL
    # Command timeouts only ever warn: they are noisy and often the cable's fault.
    assert by_check["ata_188"].severity == WARNING


def test_failed_latest_selftest_is_critical_on_an_otherwise_healthy_disk(
    machine: ReplayedMachine,
) -> None:
    _, findings = first_check(machine, "failed_selftest")
    assert [(f.check, f.severity) for f in findings] == [("selftest", CRITICAL)]
    assert "LBA 1426982048" in findings[0].reason


def test_nvme_critical_warning_bit_2_is_critical_and_spare_bit_warns(
    machine: ReplayedMachine,
) -> None:
    _, findings = first_check(machine, "nvme_critical")
    severities = {f.check: f.severity for f in findings}
    assert severities == {
        "nvme_critical_warning_bit_0": WARNING,
        "nvme_critical_warning_bit_2": CRITICAL,
        "nvme_available_spare": WARNING,
        "nvme_percentage_used": WARNING,
        "nvme_media_errors": WARNING,
    }
    # NVMe's FAILED line only mirrors the bits, so it must not add its own finding.
    assert "overall_health" not in severities


def test_smartctl_exit_bit_2_alone_is_not_a_disk_failure(machine: ReplayedMachine) -> None:
    readings, findings = first_check(machine, "smartctl_exit_bit2")
    assert readings[0].smartctl_exit_status == 4
    assert findings == []


def test_degraded_raid1_warns_and_names_the_surviving_disk(machine: ReplayedMachine) -> None:
    readings, findings = first_check(machine, "raid1_degraded")
    assert [reading.device for reading in readings] == ["/dev/sda", "/dev/sdb"]
    md = [f for f in findings if f.check == "md_degraded"]
    assert [f.disk for f in md] == ["md0", "md1"]
    assert all(f.severity == WARNING for f in md)
    assert "sdb2 (failed)" in md[0].reason
    assert "ST2000NM000A-2J2100 serial WS10SM2A" in md[0].reason
    unreadable = [f for f in findings if f.check == "unreadable"]
    assert len(unreadable) == 1 and "/dev/sdb" in unreadable[0].reason


def test_md_members_missing_from_scan_are_read_individually(machine: ReplayedMachine) -> None:
    first_check(machine, "raid1_degraded")
    assert "-d test /dev/sdb" in machine.calls()


def test_sas_disk_failing_health_with_grown_defects_and_uncorrected_errors_is_critical(
    machine: ReplayedMachine,
) -> None:
    readings, findings = first_check(machine, "failing_sas")
    assert readings[0].scsi is not None and readings[0].scsi.trip_temperature == 85
    assert {(f.check, f.severity) for f in findings} == {
        ("overall_health", CRITICAL), ("scsi_grown_defects", CRITICAL),
        ("scsi_uncorrected_errors", CRITICAL)}
    assert all("HUH721212AL4204 serial 8DG3J2ZD" in f.reason for f in findings)


def test_real_nvme_in_read_only_mode_is_critical_and_its_error_log_is_not_a_finding(
    machine: ReplayedMachine,
) -> None:
    readings, findings = first_check(machine, "nvme_read_only")
    assert readings[0].model == "CT4000P3PSSD8"
    assert readings[0].nvme is not None and readings[0].nvme.error_log_entries == 4662
    assert {f.check: f.severity for f in findings} == {
        "nvme_critical_warning_bit_0": WARNING,
        "nvme_critical_warning_bit_3": CRITICAL,
        "nvme_available_spare": WARNING,
    }
    assert "media has been placed in read-only mode" in " ".join(f.reason for f in findings)
