"""Enable a systemd unit with or without a running systemd.

pyinfra's `systemd.service` reads `systemctl show`, which needs systemd's bus: it fails in a
chroot (image baking, fast tests). `systemctl is-enabled` and `systemctl enable` only read
and write unit-file links, so this works in both places; starting, reloading and
restarting stay with `systemd.service`, used only when the node is online.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import FactBase, QuoteString, StringCommand, operation

ENABLED = {"enabled", "enabled-runtime", "static", "alias", "indirect", "generated"}


class UnitFileState(FactBase[str]):
    """`systemctl is-enabled UNIT`: enabled, disabled, static... ("" when unknown)."""

    def command(self, unit: str) -> StringCommand:  # type: ignore[override]
        return StringCommand("systemctl", "is-enabled", QuoteString(unit), "2>/dev/null",
                             "||", "true")

    def process(self, output: list[str]) -> str:  # type: ignore[override]
        return output[0].strip() if output else ""


@operation()
def unit_enabled(unit: str):  # type: ignore[no-untyped-def]
    """
    Enable a systemd unit at boot (never starts it).

    + unit: e.g. ``haproxy.service``
    """
    if host.get_fact(UnitFileState, unit=unit) in ENABLED:
        host.noop(f"{unit} is enabled")
        return
    yield StringCommand("systemctl", "enable", QuoteString(unit))
