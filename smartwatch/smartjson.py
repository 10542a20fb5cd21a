"""The fallback reader: `smartctl --json --all` (smartmontools 7.0 and later) into a reading.

Used only when pySMART cannot parse a device's text output. smartctl's JSON keys are stable
across versions (they are its documented machine interface), so this reads the few things the
policy needs: identity, overall health, ATA attributes, the self-test log, the NVMe health log
and the SAS error counters.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from smartwatch import rawvalues

if TYPE_CHECKING:
    from smartwatch.collect import DiskReading

SOURCE = "smartctl-json"


def arguments(device: str, interface: str | None) -> list[str]:
    return [*(["-d", interface] if interface else []), "--json", "--all", device]


def parse(output: list[str]) -> dict[str, Any]:
    """smartctl's JSON document; ValueError naming what came instead (an old smartctl prints
    "UNRECOGNIZED OPTION")."""
    text = "\n".join(output).strip()
    try:
        data = json.loads(text)
    except ValueError:
        lines = [line.strip() for line in output if line.strip()]
        hint = next((line for line in lines if "UNRECOGNIZED" in line.upper()),
                    lines[-1] if lines else "no output")
        raise ValueError(f"smartctl --json gave no JSON (smartmontools older than 7.0?): "
                         f"{hint}") from None
    if not isinstance(data, dict) or "smartctl" not in data:
        raise ValueError("smartctl --json printed JSON without its 'smartctl' section")
    messages = [m.get("string", "") for m in data["smartctl"].get("messages", [])
                if isinstance(m, dict) and m.get("severity") == "error"]
    if not any(key in data for key in ("model_name", "serial_number", "scsi_model_name",
                                       "smart_status")):
        raise ValueError("smartctl --json read nothing from the disk"
                         + (f": {messages[0]}" if messages else ""))
    return data


def fill(reading: DiskReading, data: dict[str, Any]) -> None:
    """Copy what `data` (smartctl's JSON) says into `reading`."""
    from smartwatch.collect import AtaAttribute, NvmeHealth, ScsiHealth, SelfTest

    reading.source = SOURCE
    reading.model = reading.model or str(data.get("model_name")
                                         or data.get("scsi_model_name") or "").strip()
    reading.serial = reading.serial or str(data.get("serial_number") or "").strip()
    reading.firmware = reading.firmware or str(data.get("firmware_version")
                                               or data.get("scsi_revision") or "").strip()
    reading.family = reading.family or str(data.get("model_family") or "").strip()
    reading.capacity_bytes = int(_get(data, "user_capacity", "bytes") or 0)
    reading.is_ssd = data.get("rotation_rate") == 0 or "nvme_smart_health_information_log" in data
    reading.temperature = _int(_get(data, "temperature", "current"))
    reading.power_on_hours = _int(_get(data, "power_on_time", "hours"))
    reading.smart_capable = bool(_get(data, "smart_support", "available")) or \
        "nvme_smart_health_information_log" in data
    passed = _get(data, "smart_status", "passed")
    if passed is not None and reading.overall_health is None:
        reading.overall_health = "PASSED" if passed else "FAILED"
        reading.health_source = SOURCE
    presets = rawvalues.presets_for(reading.model, reading.family)
    for row in _get(data, "ata_smart_attributes", "table") or []:
        raw = row.get("raw", {})
        raw_string = str(raw.get("string", ""))
        when = {"now": "FAILING_NOW", "past": "In_the_past"}.get(row.get("when_failed", ""), "-")
        flags = row.get("flags", {})
        reading.attributes[int(row["id"])] = AtaAttribute(
            id=int(row["id"]), name=str(row.get("name", "")), value=int(row.get("value", 0)),
            worst=int(row.get("worst", 0)), threshold=_int(row.get("thresh")),
            type="Pre-fail" if flags.get("prefailure") else "Old_age", when_failed=when,
            raw=raw_string,
            raw_value=rawvalues.count(int(row["id"]), raw_string, _int(raw.get("value")),
                                      presets))
    tests = _get(data, "ata_smart_self_test_log", "standard", "table") or \
        _get(data, "nvme_self_test_log", "table") or []
    for number, row in enumerate(tests, start=1):
        status = row.get("status", {})
        reading.selftests.append(SelfTest(
            number=number, kind=str(_get(row, "type", "string")
                                    or _get(row, "self_test_code", "string") or ""),
            status=str(status.get("string", "")),
            hours=str(row.get("lifetime_hours", row.get("power_on_hours", ""))),
            first_error_lba=str(row.get("lba", "-"))))
    reading.selftest_running = "progress" in str(
        _get(data, "ata_smart_data", "self_test", "status", "string") or "")
    health = data.get("nvme_smart_health_information_log")
    if isinstance(health, dict):
        reading.nvme = NvmeHealth(
            critical_warning=_int(health.get("critical_warning")),
            available_spare=_int(health.get("available_spare")),
            available_spare_threshold=_int(health.get("available_spare_threshold")),
            percentage_used=_int(health.get("percentage_used")),
            media_errors=_int(health.get("media_errors")),
            error_log_entries=_int(health.get("num_err_log_entries")),
            warning_temperature=_int(_get(data, "nvme_composite_temperature_threshold",
                                          "warning")),
            critical_temperature=_int(_get(data, "nvme_composite_temperature_threshold",
                                           "critical")))
        reading.power_on_hours = _int(health.get("power_on_hours"))
    if "scsi_grown_defect_list" in data or "scsi_error_counter_log" in data:
        counted = [_int(_get(data, "scsi_error_counter_log", kind, "total_uncorrected_errors"))
                   for kind in ("read", "write", "verify")]
        values = [value for value in counted if value is not None]
        reading.scsi = ScsiHealth(
            grown_defects=_int(data.get("scsi_grown_defect_list")),
            uncorrected_errors=sum(values) if values else None,
            trip_temperature=_int(_get(data, "temperature", "drive_trip")))


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
