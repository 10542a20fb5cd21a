"""What unlockd instances share about each node's boots, in the fleet's state store.

What identifies a boot from outside, before it is unlocked? The node tells nothing but its
Dropbear host key, the same on every boot. So a boot is the moment an instance first saw
Dropbear answer with the pinned key *after* sshd was last seen answering (or, once the boot
was unlocked, after neither port answered: `saw_silence`): every instance
records the two observations in the store (fact `unlockd_boot`), and the first to see the
initramfs after sshd names the boot (`marker`, its first-seen time in milliseconds); the
others, seeing the same boot later, find it named and use the same marker. An observation
older than the last sshd sighting is stale (the probe ran before the node came up) and is
ignored. A node never seen by unlockd before starts a boot at its first initramfs sighting.

Who unlocks a boot: whoever holds the store lease `unlock:<node>:<marker>` (`lease_name`);
the holder also checks the boot is still `waiting` before sending, so a boot is unlocked at
most once while holders stay alive (a holder killed between sending and recording is the one
case where a second instance may send again; the node has then usually left its initramfs,
and cryptroot-unlock answers "nothing is waiting").

Other facts kept here: `expected_reboot` (written by whoever reboots a node on purpose:
`clonefleet power reset|on`, rollouts), `unlock_approval` (`clonefleet unlock --approve`),
`unlock_history` (the times of recent unlocks, for the reboot-loop rule) and
`unlockd_alerts` (which alerts were sent already, so each goes out once per boot or key).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from clonefleet.state import StateStore

# Who unlockd's transitions name (drain, boot).
ACTOR = "clonefleet unlockd"

BOOT = "unlockd_boot"
EXPECTED_REBOOT = "expected_reboot"
APPROVAL = "unlock_approval"
HISTORY = "unlock_history"
ALERTS = "unlockd_alerts"
# An expected-reboot record older than this when the initramfs is first seen is stale: the
# reboot it announced happened (or never did) long ago.
EXPECTED_WINDOW = 3600.0
HISTORY_LENGTH = 20

# Boot statuses: waiting (in the initramfs, not unlocked yet), held (reboot loop), unlocked
# (passphrase accepted), failed (the passphrase was refused: never sent again for this boot),
# up (sshd seen answering since), left (after unlocked or failed, Dropbear stopped answering
# before sshd was seen: the node left its initramfs, or went down; a node that panics early
# in its boot comes back to its initramfs without sshd ever answering).
WAITING, HELD, UNLOCKED, FAILED, UP, LEFT = ("waiting", "held", "unlocked", "failed", "up",
                                             "left")
# After these, a later initramfs sighting is a new boot.
ENDED = (UP, LEFT)


@dataclass(frozen=True)
class Boot:
    marker: str
    first_seen: float
    status: str
    expected: bool = False
    expected_by: str = ""
    up_at: float = 0.0
    unlocked_at: float = 0.0
    unlocked_by: str = ""
    drained: bool = False  # unlockd drained the node for this boot: it undrains it after

    @classmethod
    def from_fact(cls, value: Any) -> Boot | None:
        if not isinstance(value, dict):
            return None
        known = {name: value[name] for name in cls.__dataclass_fields__ if name in value}
        try:
            return cls(**known)
        except TypeError:
            return None


def lease_name(node: str, marker: str) -> str:
    """The store lease that names this boot's one unlocker."""
    return f"unlock:{node}:{marker}"


def current_boot(store: StateStore, node: str) -> Boot | None:
    return Boot.from_fact(store.get_fact(node, BOOT))


def _write(store: StateStore, node: str, boot: Boot) -> Boot:
    store.set_fact(node, BOOT, asdict(boot))
    return boot


def update_boot(store: StateStore, node: str, marker: str, **changes: Any) -> Boot | None:
    """Change fields of the node's boot `marker` (nothing if another boot replaced it)."""
    with store.transaction():
        boot = current_boot(store, node)
        if boot is None or boot.marker != marker:
            return None
        return _write(store, node, Boot(**{**asdict(boot), **changes}))


def saw_sshd(store: StateStore, node: str, at: float) -> Boot | None:
    """sshd answered with its pinned key at `at`: the boot (if any) is up. Writes only when
    that changes something."""
    with store.transaction():
        boot = current_boot(store, node)
        if boot is not None and (boot.status == UP or at <= boot.first_seen):
            return boot  # up already, or a stale sighting from before this boot began
        if boot is None:
            return _write(store, node, Boot(marker="", first_seen=0.0, status=UP, up_at=at))
        return _write(store, node, Boot(**{**asdict(boot), "status": UP, "up_at": at}))


def saw_silence(store: StateStore, node: str, at: float) -> Boot | None:
    """Neither sshd nor Dropbear answered at `at`. A boot unlocked (or refused) before has
    left its initramfs: the next initramfs sighting is a new boot. A boot still waiting or
    held stays what it is (a network blip is not a reboot)."""
    with store.transaction():
        boot = current_boot(store, node)
        if boot is None or boot.status not in (UNLOCKED, FAILED) or at <= boot.first_seen:
            return boot
        return _write(store, node, Boot(**{**asdict(boot), "status": LEFT, "up_at": at}))


def saw_initramfs(store: StateStore, node: str, at: float) -> tuple[Boot | None, bool]:
    """Dropbear answered with its pinned key at `at` (and sshd did not): the boot this is,
    and whether this sighting started it. (None, False) for a stale sighting."""
    with store.transaction():
        boot = current_boot(store, node)
        if boot is not None and boot.status not in ENDED:
            return boot, False
        if boot is not None and at <= boot.up_at:
            return None, False
        expected = store.get_fact(node, EXPECTED_REBOOT)
        is_expected = isinstance(expected, dict) and \
            float(expected.get("at", 0)) >= at - EXPECTED_WINDOW
        if expected is not None:
            store.delete_fact(node, EXPECTED_REBOOT)  # one announcement, one boot
        new = Boot(marker=str(int(at * 1000)), first_seen=at, status=WAITING,
                   expected=is_expected,
                   expected_by=str(expected.get("by", "")) if is_expected and
                   isinstance(expected, dict) else "",
                   drained=boot is not None and boot.drained and still_out(store, node))
        return _write(store, node, new), True


def still_out(store: StateStore, node: str) -> bool:
    """unlockd took the node out of DNS and nobody has put it back (or taken it out again
    for another reason) since: the boot after such a boot inherits the duty to return it.
    Without this, a node that rebooted again before it was returned (say, the controller's
    instance, the one that can return nodes, was down for both boots) stayed out for good."""
    record = store.get(node)
    if record is None or record.state not in ("draining", "drained"):
        return False
    went_out = [entry for entry in store.history(node) if entry.to_state == "draining"]
    return bool(went_out) and went_out[-1].actor == ACTOR


def expect_reboot(store: StateStore, node: str, *, by: str, reason: str = "",
                  at: float | None = None) -> None:
    """Announce that `node` is about to reboot on purpose (call it before the reboot): its
    next boot is unlocked at once, whatever the policy for unexpected reboots."""
    store.set_fact(node, EXPECTED_REBOOT, {"at": time.time() if at is None else at,
                                           "by": by, "reason": reason})


def reboot_done(store: StateStore, node: str, at: float) -> bool:
    """The node was unlocked at `at` by someone else than unlockd (a rollout, `clonefleet
    unlock`): a reboot announced before then has happened, so the announcement is spent and
    the node's next boot is unexpected again (else a power loss within the hour after a
    rollout would pass for the rollout's reboot and skip the policy). An announcement made
    after `at` is left for the boot it announces. Returns whether one was spent."""
    with store.transaction():
        expected = store.get_fact(node, EXPECTED_REBOOT)
        if expected is None:
            return False
        if isinstance(expected, dict) and float(expected.get("at", 0)) > at:
            return False
        store.delete_fact(node, EXPECTED_REBOOT)
        return True


def approve(store: StateStore, node: str, *, by: str, at: float | None = None) -> float:
    """Record an operator's approval to unlock the node's current (or next) boot."""
    moment = time.time() if at is None else at
    store.set_fact(node, APPROVAL, {"at": moment, "by": by})
    return moment


def approval_at(store: StateStore, node: str) -> float | None:
    value = store.get_fact(node, APPROVAL)
    return float(value["at"]) if isinstance(value, dict) and "at" in value else None


def unlock_history(store: StateStore, node: str) -> list[float]:
    value = store.get_fact(node, HISTORY, [])
    return [float(at) for at in value] if isinstance(value, list) else []


def record_unlock(store: StateStore, node: str, marker: str, *, by: str, at: float) -> None:
    """The boot was unlocked: mark it, add it to the history, use up the approval."""
    with store.transaction():
        boot = current_boot(store, node)
        if boot is not None and boot.marker == marker:
            _write(store, node, Boot(**{**asdict(boot), "status": UNLOCKED,
                                        "unlocked_at": at, "unlocked_by": by}))
        history = [*unlock_history(store, node), at][-HISTORY_LENGTH:]
        store.set_fact(node, HISTORY, history)
        store.delete_fact(node, APPROVAL)


def claim_alert(store: StateStore, node: str, key: str, at: float | None = None) -> bool:
    """True the first time `key` (e.g. "impostor:dropbear:SHA256:...") is claimed for the
    node, across restarts and instances; False after."""
    with store.transaction():
        sent = store.get_fact(node, ALERTS, {})
        sent = sent if isinstance(sent, dict) else {}
        if key in sent:
            return False
        sent[key] = time.time() if at is None else at
        # Keep the newest ones only: a key is per boot or per presented host key.
        store.set_fact(node, ALERTS, dict(sorted(sent.items(), key=lambda item: item[1])[-50:]))
        return True
