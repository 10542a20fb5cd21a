"""systemd units in deploys, on a running node or on a root filesystem without systemd.

Host data `clonefleet_offline` (default False, see `deploys.base`) marks a root filesystem in
a chroot (fast tests, image baking): there, unit files are written and units enabled, but
nothing is started, restarted, reloaded or asked about its running state, since no systemd
runs there (and the host's must never be touched).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.operations import systemd

# What `systemctl is-enabled` prints for a unit that starts at boot or is pulled in by one.
ENABLED_STATES = ("enabled", "enabled-runtime", "static", "alias", "indirect", "generated")


def offline() -> bool:
    return bool(host.data.get("clonefleet_offline", False))


class UnitFileState(FactBase[str]):
    """`systemctl is-enabled UNIT` (works on unit files, so also in a chroot): "enabled",
    "disabled", "static", ...; "" when the unit does not exist."""

    def command(self, unit: str) -> str:  # type: ignore[override]
        return f"systemctl is-enabled {shlex.quote(unit)} 2>/dev/null || true"

    def process(self, output: list[str]) -> str:  # type: ignore[override]
        return output[0].strip() if output else ""


@operation()
def enabled_offline(unit: str):  # type: ignore[no-untyped-def]
    """Enable `unit` by its unit files only (no running systemd needed).

    + unit: full unit name, e.g. ``pdns.service``
    """
    if host.get_fact(UnitFileState, unit=unit) in ENABLED_STATES:
        host.noop(f"{unit} is enabled")
        return
    yield f"systemctl enable {shlex.quote(unit)}"


def unit(name: str, unit: str, *, restarted: bool = False, reloaded: bool = False,
         condition: Callable[[], bool] | None = None) -> None:
    """The unit enabled and running; restarted or reloaded when `condition()` holds (e.g. a
    config file changed). Offline: only enabled."""
    if offline():
        enabled_offline(name=name, unit=unit)
        return
    if condition is None:
        systemd.service(name=name, service=unit, running=True, enabled=True,
                        restarted=restarted, reloaded=reloaded)
    else:
        systemd.service(name=name, service=unit, running=True, enabled=True,
                        restarted=restarted, reloaded=reloaded, _if=condition)


def daemon_reload(name: str, condition: Callable[[], bool]) -> None:
    """Tell a running systemd about changed unit files (offline, nothing to tell)."""
    if not offline():
        systemd.daemon_reload(name=name, _if=condition)
