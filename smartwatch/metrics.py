"""Prometheus textfile metrics (node_exporter's textfile collector), one series set per disk.

`smartwatch_last_check_timestamp_seconds` is the heartbeat: alert when it is older than two
timer periods, so a silent agent is noticed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from smartwatch.collect import DiskReading
from smartwatch.policy import CRITICAL, WARNING, Finding

SEVERITY_VALUE = {"ok": 0, WARNING: 1, CRITICAL: 2}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def render(node: str, readings: list[DiskReading], findings: list[Finding],
           now: float) -> str:
    lines = [
        "# HELP smartwatch_last_check_timestamp_seconds When the last check finished.",
        "# TYPE smartwatch_last_check_timestamp_seconds gauge",
        f'smartwatch_last_check_timestamp_seconds{{node="{_escape(node)}"}} {now:.0f}',
    ]
    gauges: dict[str, tuple[str, list[str]]] = {}

    def gauge(name: str, help_text: str, labels: str, value: float | int | None) -> None:
        if value is None:
            return
        gauges.setdefault(name, (help_text, []))[1].append(f"{name}{{{labels}}} {value}")

    worst_by_disk: dict[str, str] = {}
    for finding in findings:
        current = worst_by_disk.get(finding.disk, "ok")
        if SEVERITY_VALUE[finding.severity] > SEVERITY_VALUE[current]:
            worst_by_disk[finding.disk] = finding.severity
    for reading in readings:
        labels = (f'node="{_escape(node)}",device="{_escape(reading.device)}",'
                  f'model="{_escape(reading.model)}",serial="{_escape(reading.serial)}"')
        gauge("smartwatch_disk_severity", "0 ok, 1 warning, 2 critical.", labels,
              SEVERITY_VALUE[worst_by_disk.get(reading.identity, "ok")])
        gauge("smartwatch_disk_readable", "1 when smartctl could read the disk.", labels,
              0 if reading.error else 1)
        gauge("smartwatch_disk_temperature_celsius", "Current temperature.", labels,
              reading.temperature)
        gauge("smartwatch_disk_power_on_hours", "Power-on hours.", labels,
              reading.power_on_hours)
        gauge("smartwatch_disk_capacity_bytes", "User capacity.", labels,
              reading.capacity_bytes or None)
        if reading.overall_health is not None:
            gauge("smartwatch_disk_health_passed", "1 when overall SMART health is PASSED.",
                  labels, int(reading.overall_health == "PASSED"))
        gauge("smartwatch_smartctl_exit_status", "smartctl's exit status bit mask.", labels,
              reading.smartctl_exit_status)
        for attribute in reading.attributes.values():
            if attribute.raw_value is not None:
                gauge("smartwatch_ata_attribute_raw", "ATA attribute raw value.",
                      f'{labels},id="{attribute.id}",name="{_escape(attribute.name)}"',
                      attribute.raw_value)
        if reading.scsi is not None:
            gauge("smartwatch_scsi_grown_defects", "SAS grown defect list length.", labels,
                  reading.scsi.grown_defects)
            gauge("smartwatch_scsi_uncorrected_errors", "SAS uncorrected errors.", labels,
                  reading.scsi.uncorrected_errors)
        if reading.nvme is not None:
            nvme = reading.nvme
            gauge("smartwatch_nvme_critical_warning", "NVMe critical warning bits.", labels,
                  nvme.critical_warning)
            gauge("smartwatch_nvme_available_spare_percent", "NVMe available spare.", labels,
                  nvme.available_spare)
            gauge("smartwatch_nvme_available_spare_threshold_percent",
                  "NVMe available spare threshold.", labels, nvme.available_spare_threshold)
            gauge("smartwatch_nvme_percentage_used", "NVMe endurance used.", labels,
                  nvme.percentage_used)
            gauge("smartwatch_nvme_media_errors", "NVMe media and data integrity errors.",
                  labels, nvme.media_errors)
    for name, (help_text, samples) in sorted(gauges.items()):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples]
    return "\n".join(lines) + "\n"


def write(path: str | Path, text: str) -> None:
    """Atomically replace `path`, so node_exporter never reads half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".smartwatch.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
