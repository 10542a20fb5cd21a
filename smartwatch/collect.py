"""Read every disk's SMART data into plain `DiskReading`s: through pySMART, and through
`smartctl --json` when pySMART cannot parse a device's output.

pySMART parses smartctl's text output and throws smartctl's exit status away; `RecordingSmartctl`
keeps both the status (its bits tell a disk failure from a command problem) and the raw lines,
so the exit status, the overall-health line and the disk's identity survive whatever pySMART
does with the rest (see `textfacts`). Every reading says which path produced it (`source`).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pySMART import Device
from pySMART.interface import AtaAttributes, NvmeAttributes, SCSIAttributes
from pySMART.smartctl import Smartctl

from smartwatch import rawvalues, smartjson, textfacts
from smartwatch.mdstat import MdArray, controller_of, disk_of, read_mdstat

# smartctl's exit status bits (smartctl(8), "RETURN VALUES").
EXIT_COMMAND_LINE = 1 << 0
EXIT_OPEN_FAILED = 1 << 1
EXIT_COMMAND_FAILED = 1 << 2  # a SMART command or checksum failed: not a disk failure
EXIT_DISK_FAILING = 1 << 3
EXIT_PREFAIL_NOW = 1 << 4
EXIT_PREFAIL_PAST = 1 << 5
EXIT_ERROR_LOG = 1 << 6
EXIT_SELFTEST_LOG = 1 << 7

PYSMART = "pysmart"
TEXT = "smartctl-text"
EXIT_STATUS = "smartctl-exit-status"

SCAN_LINE = re.compile(r"^(\S+)\s+-d\s+(\S+)")


class RecordingSmartctl(Smartctl):  # type: ignore[misc]
    """A pySMART `Smartctl` that remembers the exit status and lines of every call per device."""

    def __init__(self, smartctl_path: str, options: list[str] | None = None) -> None:
        super().__init__(smartctl_path=smartctl_path, options=list(options or []), sudo=False)
        self.exit_status: dict[str, int] = {}
        self.probe_status: dict[str, int] = {}
        self.json_status: dict[str, int] = {}
        self.lines: dict[str, list[str]] = {}

    def _decode_output(self, raw_output: bytes) -> list[str]:
        # pySMART runs chardet over every output; that alone costs ~26 MiB of models and most
        # of the CPU of a check. smartctl runs under LC_ALL=C (see _exec) and prints ASCII.
        return raw_output.decode("utf-8", errors="replace").splitlines()

    def _exec(self, cmd: list[str]) -> tuple[list[str], int]:
        # pySMART only sets LANG=C, which LC_ALL or LC_NUMERIC in the environment override:
        # smartctl then prints "1’556" and pySMART's NVMe parser raises. LC_ALL wins over all.
        environment = dict(os.environ, LC_ALL="C", LANG="C")
        process = subprocess.run(cmd, capture_output=True, env=environment, check=False)
        return self._decode_output(process.stdout), process.returncode

    def generic_call(self, params: list[str], pass_options: bool = False) -> tuple[list[str], int]:
        lines, status = super().generic_call(params, pass_options)
        if params and params[-1].startswith("/"):
            device = params[-1]
            if "--json" in params:
                self.json_status[device] = status
            elif "--all" in params:
                self.exit_status[device] = status
                self.lines[device] = list(lines)
            else:
                # Probes (`-d test`, `-l sasphy`, `-l background`) only tell when `--all`
                # never ran, e.g. a device that cannot be opened.
                self.probe_status[device] = status
        return lines, status


@dataclass(frozen=True)
class AtaAttribute:
    id: int
    name: str
    value: int
    worst: int
    threshold: int | None
    type: str
    when_failed: str
    raw: str
    raw_value: int | None


@dataclass(frozen=True)
class NvmeHealth:
    critical_warning: int | None
    available_spare: int | None
    available_spare_threshold: int | None
    percentage_used: int | None
    media_errors: int | None
    error_log_entries: int | None
    warning_temperature: int | None
    critical_temperature: int | None


@dataclass(frozen=True)
class ScsiHealth:
    """SAS/SCSI disks have no ATA attributes: their grown defect list and error counters."""

    grown_defects: int | None
    uncorrected_errors: int | None
    trip_temperature: int | None


@dataclass(frozen=True)
class SelfTest:
    number: int | None
    kind: str
    status: str
    hours: str
    first_error_lba: str


@dataclass
class DiskReading:
    """What one smartctl reading says about one disk; serial is the disk's identity."""

    device: str
    interface: str | None
    model: str = ""
    serial: str = ""
    firmware: str = ""
    capacity_bytes: int = 0
    is_ssd: bool = False
    temperature: int | None = None
    power_on_hours: int | None = None
    overall_health: str | None = None  # "PASSED" | "FAILED" | None (not reported)
    smartctl_exit_status: int = 0
    attributes: dict[int, AtaAttribute] = field(default_factory=dict)
    nvme: NvmeHealth | None = None
    scsi: ScsiHealth | None = None
    selftests: list[SelfTest] = field(default_factory=list)
    selftest_running: bool = False
    smart_capable: bool = False
    md_arrays: list[str] = field(default_factory=list)
    family: str = ""
    # Which path produced the attributes, logs and health counters: "pysmart", or
    # "smartctl-json" when pySMART failed; "" when neither could read them.
    source: str = PYSMART
    # Which path produced `overall_health`: "smartctl-text" (the line itself) or "smartctl-json".
    health_source: str = ""
    # Why pySMART could not parse this disk's output, when it could not.
    parse_error: str = ""
    # Set when the disk could not be read (open failed, no output, no parser could read it).
    error: str = ""

    @property
    def identity(self) -> str:
        """The key the history is kept under: the serial, or the device when none is known."""
        return self.serial or self.device

    @property
    def label(self) -> str:
        """How a human recognises the disk in a data centre ticket: model and serial."""
        model = self.model or "unknown model"
        serial = self.serial or "unknown serial"
        return f"{model} serial {serial} ({self.device})"

    @property
    def is_nvme(self) -> bool:
        return self.nvme is not None or (self.interface or "").startswith("nvme")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["attributes"] = {str(key): value for key, value in data["attributes"].items()}
        data["label"] = self.label
        return data


def scan(smartctl: RecordingSmartctl) -> list[tuple[str, str | None]]:
    """(device, interface) pairs from `smartctl --scan-open`, like pySMART's DeviceList."""
    found: list[tuple[str, str | None]] = []
    for line in smartctl.scan():
        if not line.strip() or "failed:" in line or line.startswith("#"):
            continue
        match = SCAN_LINE.match(line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def read_device(smartctl: RecordingSmartctl, device: str, interface: str | None) -> DiskReading:
    """Read one disk; a disk that cannot be read yields a reading with `error` set.

    Whatever happens to the parsers, the reading keeps smartctl's exit status, its health line
    and the disk's model and serial whenever smartctl printed them.
    """
    reading = DiskReading(device=device, interface=interface)
    try:
        pysmart = Device(device, interface=interface, smartctl=smartctl)
    except Exception as error:  # pySMART raises bare exceptions on output it cannot parse
        reading.parse_error = textfacts.describe_error(error)
        _fallback(smartctl, reading)
        return reading
    path = pysmart.dev_reference
    reading.interface = pysmart.interface or interface
    lines = smartctl.lines.get(path, [])
    _text_facts(reading, lines, smartctl.exit_status.get(path, smartctl.probe_status.get(path, 0)))
    reading.model = reading.model or (pysmart.model or "").strip()
    reading.serial = reading.serial or (pysmart.serial or "").strip()
    reading.firmware = reading.firmware or (pysmart.firmware or "").strip()
    reading.capacity_bytes = int(pysmart.size or 0)
    reading.is_ssd = bool(pysmart.is_ssd)
    reading.temperature = pysmart.temperature
    reading.smart_capable = bool(pysmart.smart_capable)
    # pySMART keeps "a self-test is running" private; it decides whether to start a new one.
    reading.selftest_running = bool(getattr(pysmart, "_test_running", False))
    for entry in pysmart.tests or []:
        reading.selftests.append(SelfTest(
            number=entry.num if isinstance(entry.num, int) else None,
            kind=str(entry.type or ""), status=str(entry.status or ""),
            hours=str(entry.hours or ""), first_error_lba=str(entry.LBA or ""),
        ))
    _interface_attributes(reading, pysmart.if_attributes, lines)
    if not reading.model and not reading.serial:
        status = reading.smartctl_exit_status
        if status & (EXIT_COMMAND_LINE | EXIT_OPEN_FAILED):
            reading.error = f"smartctl could not open the device (exit status {status})"
        elif not lines:
            reading.error = "smartctl printed nothing"
        else:
            reading.error = "smartctl output named no model or serial"
    return reading


def _text_facts(reading: DiskReading, lines: list[str], status: int) -> None:
    reading.smartctl_exit_status = status
    reading.model = textfacts.model(lines)
    reading.serial = textfacts.serial(lines)
    reading.firmware = textfacts.firmware(lines)
    reading.family = textfacts.family(lines)
    reading.overall_health = textfacts.overall_health(lines)
    reading.health_source = TEXT if reading.overall_health else ""


def _interface_attributes(reading: DiskReading, attributes: Any, lines: list[str]) -> None:
    if isinstance(attributes, AtaAttributes):
        presets = rawvalues.presets_for(reading.model, reading.family)
        for attribute in attributes.legacyAttributes:
            if attribute is None:
                continue
            raw = str(attribute.raw).strip()
            reading.attributes[attribute.num] = AtaAttribute(
                id=attribute.num, name=attribute.name, value=attribute.value_int,
                worst=attribute.worst, threshold=attribute.thresh, type=attribute.type,
                when_failed=attribute.when_failed, raw=raw,
                raw_value=rawvalues.count(attribute.num, raw, None, presets),
            )
        hours = reading.attributes.get(9)
        reading.power_on_hours = hours.raw_value if hours else None
    elif isinstance(attributes, NvmeAttributes):
        reading.nvme = NvmeHealth(
            critical_warning=attributes.criticalWarning,
            available_spare=attributes.availableSpare,
            available_spare_threshold=attributes.availableSpareThreshold,
            percentage_used=attributes.percentageUsed,
            media_errors=attributes.integrityErrors,
            error_log_entries=attributes.errorEntries,
            warning_temperature=textfacts.celsius_after(lines, "Warning  Comp. Temp. Threshold:"),
            critical_temperature=textfacts.celsius_after(lines,
                                                         "Critical Comp. Temp. Threshold:"),
        )
        reading.power_on_hours = attributes.powerOnHours
    elif isinstance(attributes, SCSIAttributes) and textfacts.is_scsi(lines):
        diagnostics = attributes.diagnostics
        uncorrected = [getattr(diagnostics, name, None) for name in
                       ("_Uncorrected_Reads", "_Uncorrected_Writes", "_Uncorrected_Verifies")]
        counted = [value for value in uncorrected if isinstance(value, int)]
        reading.scsi = ScsiHealth(
            grown_defects=diagnostics.Reallocated_Sector_Ct,
            uncorrected_errors=sum(counted) if counted else None,
            trip_temperature=textfacts.celsius_after(lines, "Drive Trip Temperature:", unit="C"),
        )
        reading.power_on_hours = diagnostics.Power_On_Hours


def _fallback(smartctl: RecordingSmartctl, reading: DiskReading) -> None:
    """pySMART failed: keep the exit status, health line and identity of the text output, and
    read the rest from `smartctl --json` (smartmontools >= 7.0)."""
    device, interface = reading.device, reading.interface
    lines = smartctl.lines.get(device, [])
    status = smartctl.exit_status.get(device)
    _text_facts(reading, lines, status if status is not None
                else smartctl.probe_status.get(device, 0))
    reading.source = ""
    if reading.smartctl_exit_status & (EXIT_COMMAND_LINE | EXIT_OPEN_FAILED):
        reading.error = (f"smartctl could not open the device (exit status "
                         f"{reading.smartctl_exit_status})")
        return
    output, json_status = smartctl.generic_call(smartjson.arguments(device, interface),
                                                pass_options=True)
    try:
        data = smartjson.parse(output)
    except ValueError as error:
        reading.error = (f"pySMART could not parse smartctl's output ({reading.parse_error}) "
                         f"and {error}")
        return
    if status is None:
        # The text reading never ran (pySMART failed before it): smartctl's own JSON status.
        reading.smartctl_exit_status = int(data["smartctl"].get("exit_status", json_status))
    smartjson.fill(reading, data)
    if not reading.model and not reading.serial:
        reading.error = "smartctl --json named no model or serial"


def collect(
    smartctl_path: str,
    mdstat_path: str | Path = "/proc/mdstat",
    devices: list[str] | None = None,
    smartctl_options: list[str] | None = None,
) -> tuple[list[DiskReading], list[MdArray]]:
    """Read every disk smartctl finds plus every md member it missed; return disks and arrays."""
    smartctl = RecordingSmartctl(smartctl_path, smartctl_options)
    targets: list[tuple[str, str | None]] = (
        [(device, None) for device in devices] if devices else scan(smartctl)
    )
    arrays = read_mdstat(mdstat_path)
    known = {controller_of(Path(device).name) for device, _ in targets}
    members_of: dict[str, list[str]] = {}
    for array in arrays:
        for member in array.members:
            disk = controller_of(disk_of(member))
            members_of.setdefault(disk, []).append(array.name)
            if disk not in known:
                # A RAID member behind a path smartctl --scan did not list: read it anyway.
                targets.append((f"/dev/{disk_of(member)}", None))
                known.add(disk)
    readings = []
    for device, interface in targets:
        reading = read_device(smartctl, device, interface)
        reading.md_arrays = sorted(set(members_of.get(controller_of(Path(device).name), [])))
        readings.append(reading)
    return readings, arrays


def reread(smartctl_path: str, reading: DiskReading,
           smartctl_options: list[str] | None = None) -> DiskReading:
    """A second reading of the same disk, used to confirm a critical finding before a drain."""
    smartctl = RecordingSmartctl(smartctl_path, smartctl_options)
    again = read_device(smartctl, reading.device, reading.interface)
    again.md_arrays = list(reading.md_arrays)
    return again
