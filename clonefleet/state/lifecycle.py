"""A node's life: the one table of lifecycle states and the named transitions between them.

Invariant: a node changes state only through a transition named here, applied with
`store.apply(node, TRANSITION, actor=..., reason=...)`, which checks the node's current state
against the transition's `from_states` and writes the new one in one atomic step (a SQLite
transaction; on etcd a transaction guarded by the node key's revision). No other module lists
which states may follow which. `store.set_state` writes a state unchecked: for test setup and
repairs only.

`markdown_table()` renders the table as docs/state.md shows it (a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from clonefleet.errors import StateError

# The order is the order of a node's life; `draining`, `drained` and `updating` sit beside
# `active` (a node leaves DNS before anything disruptively changes it); `retired` is terminal.
STATES = (
    "ordered",
    "rescue",
    "installed",
    "locked",
    "booted",
    "deployed",
    "active",
    "draining",
    "drained",
    "updating",
    "retired",
)

# The from-state of a node the store has never recorded.
UNRECORDED = None


@dataclass(frozen=True)
class NamedTransition:
    """A move of a node to `to` that is allowed only from one of `from_states` (`None`: the
    store has no record of the node yet). `used_by` names the modules that apply it."""

    name: str
    from_states: frozenset[str | None]
    to: str
    used_by: tuple[str, ...]
    why: str

    def allows(self, current: str | None) -> bool:
        return current in self.from_states

    def check(self, node: str, current: str | None) -> None:
        """Raise `StateError` (one line: node, its state, this transition, what is allowed)
        unless `current` is one of `from_states`."""
        if not self.allows(current):
            raise StateError(
                f"node {node!r} is {current or 'not recorded yet'}: {self.name} (to {self.to}) "
                f"is allowed only from {describe_states(self.from_states)}")


def describe_states(states: Iterable[str | None]) -> str:
    """The states in lifecycle order, `None` first as "not recorded"."""
    present = set(states)
    names = (["not recorded"] if None in present else []) + [
        state for state in STATES if state in present]
    return ", ".join(names)


def _transition(name: str, from_states: Iterable[str | None], to: str, used_by: Iterable[str],
                why: str) -> NamedTransition:
    allowed = frozenset(from_states)
    unknown = {state for state in allowed | {to} if state is not None and state not in STATES}
    if unknown:  # a typo here must fail at import, not at the first node that hits it
        raise ValueError(f"transition {name!r} names unknown states {sorted(unknown)}")
    return NamedTransition(name, allowed, to, tuple(used_by), why)


# Every state but `retired`: a reinstall (`provision --wipe`) may start from any of them.
_NOT_RETIRED = [state for state in STATES if state != "retired"]

ORDER = _transition(
    "order", [UNRECORDED], "ordered", ["clonefleet/provision.py"],
    "the provider created the node's server")
BOOT_RESCUE = _transition(
    "boot_rescue", _NOT_RETIRED, "rescue", ["clonefleet/provision.py"],
    "the rescue system is up for an install; from any state but retired, since "
    "`provision --wipe` reinstalls a node wherever it is")
INSTALL = _transition(
    "install", ["rescue"], "installed", ["clonefleet/provision.py"],
    "the encrypted install finished")
LOCK = _transition(
    "lock", ["installed"], "locked", ["clonefleet/provision.py"],
    "booted from disk, waiting in the initramfs for its passphrase")
BOOT = _transition(
    "boot", ["locked"], "booted", ["clonefleet/provision.py", "clonefleet/unlockd/service.py"],
    "unlocked; sshd answers with the pinned key")
DEPLOY = _transition(
    "deploy", ["booted"], "deployed", ["clonefleet/provision.py"],
    "the node deploy ran without failure")
ACTIVATE = _transition(
    "activate", ["deployed"], "active", ["clonefleet/dnsmap/drain.py"],
    "a provisioned node enters DNS answers (`clonefleet undrain`, with the health rule)")
DRAIN = _transition(
    "drain", ["active"], "draining",
    ["clonefleet/dnsmap/drain.py", "clonefleet/unlockd/service.py"],
    "out of DNS answers; clients may still hold its addresses until the TTL and grace pass")
SETTLE = _transition(
    "settle", ["draining"], "drained", ["clonefleet/dnsmap/publish.py"],
    "the longest routed TTL plus the grace period has passed: no client is left")
UNDRAIN = _transition(
    "undrain", ["draining", "drained"], "active", ["clonefleet/dnsmap/drain.py"],
    "back into DNS answers (refused while its last health check failed, unless forced)")
BEGIN_UPDATE = _transition(
    "begin_update", ["drained"], "updating", ["clonefleet/rollout/node_steps.py"],
    "a rollout changes a drained node (upgrade, reboot)")
FINISH_UPDATE = _transition(
    "finish_update", ["updating"], "drained", ["clonefleet/rollout/node_steps.py"],
    "the rollout's change is done and checked; `undrain` returns the node to DNS")
FAIL_UPDATE = _transition(
    "fail_update", ["updating"], "drained", ["clonefleet/rollout/node_steps.py"],
    "a rollout step failed on the node: it stays out of DNS, the failure is its recorded "
    "reason (and a failed health check, so a plain `undrain` refuses it)")
RETIRE = _transition(
    "retire", [UNRECORDED, "ordered", "rescue", "installed", "locked", "booted", "deployed",
               "drained", "updating"], "retired", ["clonefleet/retire.py"],
    "its server is deleted; never from active or draining: a node in (or leaving) DNS "
    "answers is drained first")
DESTROY_LAB = _transition(
    "destroy_lab", [state for state in STATES if state != "ordered"], "ordered",
    ["clonefleet/lab/destroy.py"],
    "its lab VM was deleted (`clonefleet lab destroy`); from any recorded state, even "
    "retired: the lab node can be provisioned afresh")

TRANSITIONS = (ORDER, BOOT_RESCUE, INSTALL, LOCK, BOOT, DEPLOY, ACTIVATE, DRAIN, SETTLE,
               UNDRAIN, BEGIN_UPDATE, FINISH_UPDATE, FAIL_UPDATE, RETIRE, DESTROY_LAB)
BY_NAME = {transition.name: transition for transition in TRANSITIONS}


def check_state(state: str) -> str:
    """Refuse a state name that is not in the table."""
    if state not in STATES:
        raise StateError(f"unknown state {state!r}; use one of: {', '.join(STATES)}")
    return state


def markdown_table() -> str:
    """The table of docs/state.md, generated from `TRANSITIONS`."""
    lines = ["| transition | from | to | used by | why |", "|---|---|---|---|---|"]
    for transition in TRANSITIONS:
        used_by = ", ".join(f"`{module}`" for module in transition.used_by) or "(rollouts, "\
            "not yet)"
        lines.append(f"| `{transition.name}` | {describe_states(transition.from_states)} "
                     f"| {transition.to} | {used_by} | {transition.why} |")
    return "\n".join(lines) + "\n"

