"""`clonefleet power on|off|reset`: a node's power through its provider's driver.

Invariant: the state store records a node's lifecycle, not its power. Powering a node off or
resetting it records nothing (the next `status --live` shows what it is doing); only what the
driver itself must remember (which boot it asked for) is kept, by the driver.

Cutting a node that serves DNS answers is refused unless the caller says so (`confirmed`):
an operator drains it first (`clonefleet drain NODE`), so no client is sent to a node that is
going down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clonefleet.dnsmap.model import build_map
from clonefleet.errors import ClonefleetError, ConfigError, one_line
from clonefleet.fleetrun import failure_error
from clonefleet.inventory import Fleet, Node
from clonefleet.providers.base import Provider
from clonefleet.state import StateStore

PowerAction = Literal["on", "off", "reset"]
ACTIONS: tuple[PowerAction, ...] = ("on", "off", "reset")
# Actions that take a running node down.
CUTTING: tuple[PowerAction, ...] = ("off", "reset")


class ActiveNodeError(ConfigError):
    """`off` or `reset` of a node that serves DNS answers, without confirmation."""


@dataclass(frozen=True)
class PowerOutcome:
    node: str
    action: str
    ok: bool
    changed: bool  # the provider was asked to do something
    message: str
    seconds: float
    error: str = ""
    exit_code: int = 0
    failure: ClonefleetError | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "action": self.action, "ok": self.ok,
                "changed": self.changed, "message": self.message,
                "seconds": round(self.seconds, 3), "error": self.error,
                "exit_code": self.exit_code}


ProviderFor = Callable[[Node], Provider]


def active_nodes(fleet: Fleet, store: StateStore, nodes: Sequence[str]) -> list[str]:
    """Those of `nodes` the DNS map sends clients to."""
    dns_map = build_map(fleet, store)
    return [name for name in nodes if dns_map.node(name).active]


def check_confirmed(fleet: Fleet, store: StateStore, action: PowerAction,
                    nodes: Sequence[str], confirmed: bool) -> None:
    """Refuse to cut nodes that are active in the DNS map unless `confirmed`."""
    if action not in CUTTING or confirmed:
        return
    active = active_nodes(fleet, store, nodes)
    if active:
        names = ", ".join(active)
        drains = "; ".join(f"`clonefleet drain {name}`" for name in active)
        raise ActiveNodeError(f"power {action} {names}: active in the DNS map (clients are "
                              f"sent there); drain first ({drains}), or pass --yes to "
                              f"power {action} anyway")


def power(action: PowerAction, nodes: Sequence[str], fleet: Fleet,
          provider_for: ProviderFor, *, log: Callable[[str], None] = print,
          clock: Callable[[], float] = time.monotonic,
          announce: Callable[[str, PowerAction], None] | None = None) -> list[PowerOutcome]:
    """Ask each node's provider for `action`, one node after the other; a node's failure
    is its outcome and the next node still runs. `announce(node, action)` runs before an
    `on` or `reset` is asked for: it records the coming boot as expected, so unlockd unlocks
    it at once (`clonefleet.unlockd.boots.expect_reboot`)."""
    outcomes = []
    for name in nodes:
        node = fleet.node(name)
        started = clock()
        log(f"{name}: power {action} ({node.provider})")
        try:
            provider = provider_for(node)
            if announce is not None and action in ("on", "reset"):
                announce(name, action)
            changed, message = _apply(action, provider, node)
        except ClonefleetError as error:
            text = one_line(error)
            log(f"{name}: power {action} failed: {text}")
            outcomes.append(PowerOutcome(name, action, False, False, "", clock() - started,
                                         error=text, exit_code=error.exit_code,
                                         failure=error))
            continue
        log(f"{name}: {message}")
        outcomes.append(PowerOutcome(name, action, True, changed, message, clock() - started))
    return outcomes


def _apply(action: PowerAction, provider: Provider, node: Node) -> tuple[bool, str]:
    if action == "on":
        if provider.power_on(node):
            return True, "powering on from disk (see `clonefleet status --live`)"
        return False, "already on: nothing to do"
    if action == "off":
        provider.power_off(node)
        return True, "powered off"
    provider.reset(node)
    return True, "reset (see `clonefleet status --live`)"


def outcome_error(action: PowerAction, outcomes: Sequence[PowerOutcome]) -> ClonefleetError | None:
    """None if every node succeeded; else the error a run over several nodes ends with."""
    return failure_error(f"power {action}", len(outcomes),
                         [(outcome.node, None) for outcome in outcomes if not outcome.ok])


def provider_factory(fleet: Fleet, state_dir: Path,
                     log: Callable[[str], None]) -> ProviderFor:
    from clonefleet.providers import provider_for

    return lambda node: provider_for(fleet, node, state_dir, log)
