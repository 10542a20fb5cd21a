"""Turn disk readings into findings: what is wrong, how bad, and why, in plain language.

Two kinds of finding:
- a *condition* holds while the reading shows it (overall health FAILED, an NVMe critical
  warning bit, the latest self-test failed, too hot, an md array degraded); it clears when the
  reading stops showing it.
- an *event* is a counter that grew (reallocated, pending, uncorrectable sectors, NVMe media
  errors ...). It is judged against the disk's own history, so a stable old count is not a
  finding; a new increase is, for `event_window_hours`, and then it clears. Pending (197) and
  offline-uncorrectable (198) sectors are *standing*: still unreadable while the count is
  non-zero, so the finding stays until the count is back to zero.

smartctl's exit status is evidence of its own: bits 3 (disk failing), 4 (pre-fail attribute at
threshold) and 7 (errors in the self-test log) raise findings even when no parser could read
the part of the output they summarise. Every finding names the path that produced it.

Defaults follow Backblaze's field data (they investigate a drive when the raw value of SMART 5,
187, 188, 197 or 198 is above 0) and the pitfalls in smartd/Scrutiny issue trackers: 188 and 199
are noisy (cable, controller) and only ever warn; NVMe error-log growth is usually harmless
"Invalid Field in Command" entries (smartmontools #208) and is off; smartctl's exit bit 2 is a
command problem, not a disk failure; an old failed self-test is ignored once a newer one passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from smartwatch.collect import (
    EXIT_COMMAND_LINE,
    EXIT_DISK_FAILING,
    EXIT_OPEN_FAILED,
    EXIT_PREFAIL_NOW,
    EXIT_SELFTEST_LOG,
    EXIT_STATUS,
    DiskReading,
)
from smartwatch.mdstat import MdArray

WARNING = "warning"
CRITICAL = "critical"
SEVERITIES = (WARNING, CRITICAL)


@dataclass(frozen=True)
class CounterRule:
    """How one counter is judged: any increase warns; reaching `critical_at` is critical."""

    label: str
    enabled: bool = True
    critical_at: int | None = None
    # Whether a further increase while the finding is active sends another alert.
    realert: bool = True
    # A standing counter is a finding for as long as it is non-zero, not only after growth:
    # pending and uncorrectable sectors stay unreadable until the count drops back to zero.
    standing: bool = False


DEFAULT_COUNTERS: dict[str, CounterRule] = {
    "ata_5": CounterRule("reallocated sectors (SMART 5)", critical_at=100),
    "ata_187": CounterRule("reported uncorrectable errors (SMART 187)", critical_at=100),
    # Command timeouts are noisy (Scrutiny #260): they often come from cables and controllers.
    "ata_188": CounterRule("command timeouts (SMART 188)", realert=False),
    "ata_197": CounterRule("pending sectors (SMART 197)", critical_at=20, standing=True),
    "ata_198": CounterRule("offline uncorrectable sectors (SMART 198)", critical_at=20,
                           standing=True),
    # CRC errors are almost always the cable, not the disk.
    "ata_199": CounterRule("interface CRC errors (SMART 199)", realert=False),
    "ata_failed_in_past": CounterRule("attributes that failed in the past"),
    "nvme_media_errors": CounterRule("NVMe media and data integrity errors", critical_at=100),
    "scsi_grown_defects": CounterRule("grown defects (SAS reassigned blocks)", critical_at=100),
    "scsi_uncorrected_errors": CounterRule("uncorrected read/write/verify errors (SAS)",
                                           critical_at=10),
    # Harmless "Invalid Field in Command" entries grow this log on many drives.
    "nvme_error_log_entries": CounterRule("NVMe error log entries", enabled=False, realert=False),
}

# NVMe critical_warning bits and what they mean.
NVME_WARNING_BITS = {
    0: "available spare has fallen below threshold",
    1: "temperature is outside its limits",
    2: "NVM subsystem reliability has been degraded",
    3: "media has been placed in read-only mode",
    4: "volatile memory backup device has failed",
    5: "persistent memory region has become read-only",
}


@dataclass(frozen=True)
class PolicyConfig:
    counters: dict[str, CounterRule] = field(default_factory=lambda: dict(DEFAULT_COUNTERS))
    event_window_hours: float = 168.0
    overall_failed: str = CRITICAL
    attribute_failing_now: str = CRITICAL
    selftest_failed: str = CRITICAL
    # Bits 2 (reliability degraded) and 3 (read-only) mean the drive is dying: drain.
    nvme_critical_bits: tuple[int, ...] = (2, 3)
    nvme_spare_below_threshold: str = WARNING
    nvme_percentage_used_warning: int = 90
    ata_temperature_limit_hdd: int = 60
    ata_temperature_limit_ssd: int = 70
    # A degraded RAID1 still serves; the node is a clone, so losing it costs capacity, not data.
    md_degraded: str = WARNING
    unreadable_disk: str = WARNING

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> PolicyConfig:
        """Given the [policy] table of the config file, return the policy; unknown keys fail."""
        known = {name for name in cls.__dataclass_fields__ if name != "counters"}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key == "counters":
                continue
            if key not in known:
                raise ValueError(f"unknown policy key {key!r}; use one of: "
                                 f"{', '.join(sorted(known | {'counters'}))}")
            if key in ("overall_failed", "attribute_failing_now", "selftest_failed",
                       "nvme_spare_below_threshold", "md_degraded", "unreadable_disk") \
                    and value not in SEVERITIES:
                raise ValueError(f"policy.{key} must be 'warning' or 'critical', got {value!r}")
            values[key] = tuple(value) if key == "nvme_critical_bits" else value
        counters = dict(DEFAULT_COUNTERS)
        for name, override in dict(data.get("counters", {})).items():
            if name not in counters:
                raise ValueError(f"unknown counter {name!r}; use one of: "
                                 f"{', '.join(sorted(counters))}")
            counters[name] = replace(counters[name], **dict(override))
        return cls(counters=counters, **values)


@dataclass(frozen=True)
class Finding:
    """One thing wrong with one disk (or array). `key` is stable across checks."""

    key: str
    disk: str
    check: str
    severity: str
    reason: str
    value: int | None = None
    realert: bool = False
    # The path that produced the evidence: "pysmart", "smartctl-json", "smartctl-text" (a line
    # smartwatch read itself), "smartctl-exit-status", or "node" for node-wide findings.
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "disk": self.disk, "check": self.check,
                "severity": self.severity, "reason": self.reason, "value": self.value,
                "source": self.source}


@dataclass(frozen=True)
class CounterState:
    """A counter as the history knows it after this reading."""

    value: int
    previous: int | None  # None on the first reading of this disk
    last_increase_at: float | None
    last_increase_from: int | None


def counters_of(reading: DiskReading) -> dict[str, int]:
    """The counters whose growth matters, from one reading."""
    counters: dict[str, int] = {}
    for attribute_id in (5, 187, 188, 197, 198, 199):
        attribute = reading.attributes.get(attribute_id)
        if attribute is not None and attribute.raw_value is not None:
            counters[f"ata_{attribute_id}"] = attribute.raw_value
    if reading.attributes:
        counters["ata_failed_in_past"] = sum(
            1 for attribute in reading.attributes.values()
            if attribute.when_failed.lower() == "in_the_past"
        )
    if reading.scsi is not None:
        if reading.scsi.grown_defects is not None:
            counters["scsi_grown_defects"] = reading.scsi.grown_defects
        if reading.scsi.uncorrected_errors is not None:
            counters["scsi_uncorrected_errors"] = reading.scsi.uncorrected_errors
    if reading.nvme is not None:
        if reading.nvme.media_errors is not None:
            counters["nvme_media_errors"] = reading.nvme.media_errors
        if reading.nvme.error_log_entries is not None:
            counters["nvme_error_log_entries"] = reading.nvme.error_log_entries
    return counters


def advance_counters(
    previous: dict[str, CounterState], reading: DiskReading, now: float
) -> dict[str, CounterState]:
    """Given the stored counters and a new reading, return the counters after it.

    The first reading of a counter is its baseline; a non-zero baseline counts as an increase
    from zero at that moment, so a disk that arrives with bad sectors is reported once.
    """
    states: dict[str, CounterState] = {}
    for name, value in counters_of(reading).items():
        before = previous.get(name)
        if before is None:
            grew = value > 0
            states[name] = CounterState(value, None, now if grew else None, 0 if grew else None)
        elif value > before.value:
            states[name] = CounterState(value, before.value, now, before.value)
        else:
            # Equal or lower (pending sectors get remapped): keep the last increase as it was.
            states[name] = CounterState(value, before.value, before.last_increase_at,
                                        before.last_increase_from)
    return states


def evaluate(
    reading: DiskReading,
    counters: dict[str, CounterState],
    policy: PolicyConfig,
    now: float,
) -> list[Finding]:
    """Given one reading and its counters after it, return the disk's findings."""
    disk = reading.identity
    label = reading.label
    findings: list[Finding] = []

    def add(check: str, severity: str, reason: str, value: int | None = None,
            realert: bool = False, source: str = reading.source) -> None:
        findings.append(Finding(f"{disk}:{check}", disk, check, severity, reason, value, realert,
                                source))

    status = reading.smartctl_exit_status
    if status & (EXIT_COMMAND_LINE | EXIT_OPEN_FAILED):
        add("unreadable", policy.unreadable_disk,
            f"smartctl could not open disk {label} (exit status {status}).", source=EXIT_STATUS)
        return findings
    if reading.error:
        # Keep going: the exit status and the health line below still count.
        add("unreadable", policy.unreadable_disk,
            f"Disk {label} could not be read: {reading.error}.", source=reading.source or "none")

    # NVMe drives report overall health FAILED for any critical warning bit, temperature
    # included, so for them the bits below decide; the line decides for ATA and SAS.
    if reading.overall_health == "FAILED" and reading.nvme is None:
        add("overall_health", policy.overall_failed,
            f"Disk {label} reports its overall SMART health as FAILED: the drive itself "
            f"expects to fail soon.", source=reading.health_source)
    elif status & EXIT_DISK_FAILING and reading.nvme is None:
        add("overall_health", policy.overall_failed,
            f"smartctl's exit status {status} says disk {label} reports itself failing (bit 3), "
            f"although no health line could be read.", source=EXIT_STATUS)
    failing_now = False
    for attribute in reading.attributes.values():
        if attribute.when_failed.upper() == "FAILING_NOW":
            failing_now = True
            add(f"ata_{attribute.id}_failing_now", policy.attribute_failing_now,
                f"Disk {label}: attribute {attribute.id} {attribute.name} is failing now "
                f"(normalised value {attribute.value} at or below threshold "
                f"{attribute.threshold}, raw {attribute.raw}).")
    if status & EXIT_PREFAIL_NOW and not failing_now:
        add("prefail_now", policy.attribute_failing_now,
            f"smartctl's exit status {status} says a pre-fail attribute of disk {label} is at "
            f"or below its threshold now (bit 4), although the attribute table could not be "
            f"read.", source=EXIT_STATUS)
    if status & EXIT_SELFTEST_LOG and not reading.selftests:
        add("selftest", policy.selftest_failed,
            f"smartctl's exit status {status} says the self-test log of disk {label} holds "
            f"errors (bit 7), although the log itself could not be read.", source=EXIT_STATUS)
    if reading.error:
        return findings

    _counter_findings(reading, counters, policy, now, add)
    _selftest_findings(reading, policy, add)
    _temperature_findings(reading, policy, add)
    if reading.nvme is not None:
        _nvme_findings(reading, policy, add)
    return findings


def _counter_findings(reading: DiskReading, counters: dict[str, CounterState],
                      policy: PolicyConfig, now: float, add: Any) -> None:
    window = policy.event_window_hours * 3600
    for name, state in counters.items():
        rule = policy.counters.get(name)
        if rule is None or not rule.enabled:
            continue
        if rule.standing and state.value == 0:
            continue  # back to zero: those sectors were remapped or read again
        recent = state.last_increase_at is not None and now - state.last_increase_at <= window
        if not recent and not rule.standing:
            continue
        severity = CRITICAL if rule.critical_at is not None and state.value >= rule.critical_at \
            else WARNING
        if recent:
            since = state.last_increase_from or 0
            when = "at its first check" if state.previous is None and since == 0 else "recently"
            reason = f"{rule.label} grew from {since} to {state.value} ({when})"
        else:
            reason = f"{rule.label} still at {state.value}: those sectors stay unreadable"
        add(name, severity, f"Disk {reading.label}: {reason}.", value=state.value,
            realert=rule.realert)


def _selftest_findings(reading: DiskReading, policy: PolicyConfig, add: Any) -> None:
    # Only the most recent finished test counts: an old failure followed by a passing test is
    # history, not a current problem (the log keeps failures forever).
    for test in reading.selftests:
        status = test.status.lower()
        if "progress" in status or status == "running":
            continue
        if "failure" in status or "fatal" in status or "failed" in status:
            add("selftest", policy.selftest_failed,
                f"Disk {reading.label}: its latest self-test ({test.kind}, at {test.hours} "
                f"power-on hours) ended '{test.status}'"
                + (f", first error at LBA {test.first_error_lba}."
                   if test.first_error_lba not in ("", "-") else "."))
        return


def _temperature_findings(reading: DiskReading, policy: PolicyConfig, add: Any) -> None:
    temperature = reading.temperature
    if temperature is None:
        return
    if reading.nvme is not None and reading.nvme.warning_temperature:
        limit = reading.nvme.warning_temperature
        source = "the drive's warning threshold"
    elif reading.scsi is not None and reading.scsi.trip_temperature:
        limit = reading.scsi.trip_temperature
        source = "the drive's trip temperature"
    elif reading.is_ssd or reading.is_nvme:
        limit, source = policy.ata_temperature_limit_ssd, "the SSD limit"
    else:
        limit, source = policy.ata_temperature_limit_hdd, "the HDD limit"
    if temperature > limit:
        add("temperature", WARNING,
            f"Disk {reading.label} is at {temperature} °C, above {source} of {limit} °C.",
            value=temperature)


def _nvme_findings(reading: DiskReading, policy: PolicyConfig, add: Any) -> None:
    nvme = reading.nvme
    assert nvme is not None
    bits = nvme.critical_warning or 0
    for bit, meaning in NVME_WARNING_BITS.items():
        if bits & (1 << bit):
            severity = CRITICAL if bit in policy.nvme_critical_bits else WARNING
            add(f"nvme_critical_warning_bit_{bit}", severity,
                f"NVMe disk {reading.label} raises critical warning bit {bit}: {meaning}.")
    if nvme.available_spare is not None and nvme.available_spare_threshold is not None \
            and nvme.available_spare < nvme.available_spare_threshold:
        add("nvme_available_spare", policy.nvme_spare_below_threshold,
            f"NVMe disk {reading.label} has {nvme.available_spare}% spare left, below its own "
            f"threshold of {nvme.available_spare_threshold}%.", value=nvme.available_spare)
    if nvme.percentage_used is not None \
            and nvme.percentage_used >= policy.nvme_percentage_used_warning:
        add("nvme_percentage_used", WARNING,
            f"NVMe disk {reading.label} has used {nvme.percentage_used}% of its rated "
            f"endurance.", value=nvme.percentage_used)


def evaluate_arrays(arrays: list[MdArray], readings: list[DiskReading],
                    policy: PolicyConfig) -> list[Finding]:
    """Findings for degraded md arrays, naming the member disks by model and serial."""
    from smartwatch.mdstat import controller_of, disk_of

    by_name = {controller_of(reading.device.rsplit("/", 1)[-1]): reading for reading in readings}
    findings = []
    for array in arrays:
        if not array.degraded:
            continue
        described = []
        for member in array.members:
            reading = by_name.get(controller_of(disk_of(member)))
            known = reading is not None and bool(reading.model or reading.serial)
            who = f" on {reading.label}" if reading is not None and known else ""
            state = " (failed)" if member in array.failed else ""
            described.append(f"{member}{state}{who}")
        shape = f"{array.working}/{array.wanted} members working" if array.wanted else "degraded"
        recovery = ", rebuilding" if array.recovering else ""
        findings.append(Finding(
            key=f"md:{array.name}:degraded", disk=array.name, check="md_degraded",
            severity=policy.md_degraded,
            reason=f"RAID array {array.name} ({array.level}) is degraded: {shape} "
                   f"[{array.map}]{recovery}; members: {'; '.join(described)}.",
        ))
    return findings


def worst(findings: list[Finding]) -> str:
    """The worst severity in `findings`, or "ok"."""
    if any(finding.severity == CRITICAL for finding in findings):
        return CRITICAL
    return WARNING if findings else "ok"
