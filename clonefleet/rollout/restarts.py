"""What a node needs besides its upgrades: a reboot, or only service restarts. Pure parsers
of what the node's own tools say.

- needrestart's batch mode (`needrestart -b -r l`: list only, never restart, never prompt)
  prints `NEEDRESTART-KSTA: N` (0 unknown, 1 the running kernel is the newest installed,
  2 an ABI-compatible kernel upgrade is pending, 3 a newer kernel version is installed) and
  one `NEEDRESTART-SVC: unit` per service still running old code. The fact prints
  `NEEDRESTART-MISSING` when needrestart is not installed.
- `/var/run/reboot-required` (and `.pkgs`, the packages that asked) is written by the
  postinst of Debian's kernel, libc and similar packages. A hint, not the whole truth.
"""

from __future__ import annotations

from dataclasses import dataclass

MISSING = "NEEDRESTART-MISSING"
KERNEL_STATES = {
    "0": "unknown",
    "1": "current",
    "2": "ABI-compatible upgrade pending",
    "3": "version upgrade pending",
}


@dataclass(frozen=True)
class NeedRestart:
    installed: bool
    services: tuple[str, ...] = ()
    kernel_status: str | None = None  # KSTA's number, None when not reported
    running_kernel: str | None = None
    expected_kernel: str | None = None

    @property
    def kernel_pending(self) -> bool:
        return self.kernel_status in ("2", "3")

    @property
    def kernel_description(self) -> str:
        return KERNEL_STATES.get(self.kernel_status or "", "not reported")


def parse_needrestart(output: str) -> NeedRestart:
    """Given needrestart's batch output (or the missing marker), what it reports."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if MISSING in lines:
        return NeedRestart(installed=False)
    values: dict[str, list[str]] = {}
    for line in lines:
        key, separator, value = line.partition(":")
        if separator and key.startswith("NEEDRESTART-"):
            values.setdefault(key.removeprefix("NEEDRESTART-"), []).append(value.strip())
    return NeedRestart(
        installed=True,
        services=tuple(dict.fromkeys(values.get("SVC", []))),
        kernel_status=_first(values, "KSTA"),
        running_kernel=_first(values, "KCUR"),
        expected_kernel=_first(values, "KEXP"))


def _first(values: dict[str, list[str]], key: str) -> str | None:
    return values[key][0] if values.get(key) else None


@dataclass(frozen=True)
class RebootFlag:
    required: bool
    packages: tuple[str, ...] = ()  # from /var/run/reboot-required.pkgs


def parse_reboot_flag(output: str) -> RebootFlag:
    """Given the fact's output: `yes` (then the .pkgs lines) or `no`."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines or lines[0] != "yes":
        return RebootFlag(False)
    return RebootFlag(True, tuple(dict.fromkeys(lines[1:])))
