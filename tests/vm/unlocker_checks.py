"""Unlockers on lab nodes: two nodes of the fleet run `clonefleet unlockd` in unlocker mode
under their own systemd (the deployed unit: dynamic user, the identity as a credential) and
unlock a third node that a hard power cycle left in its initramfs, while the controller runs
nothing: no `clonefleet unlockd`, no `clonefleet unlock`.

Passphrase deliveries are counted on the node side: the node's Dropbear logs on its console
(`-E`), one "Pubkey auth succeeded … key SHA256:…" line per login, and an unlocker logs in
only to deliver (its probes stop at the key exchange). The fingerprint says which unlocker it
was.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from clonefleet.lab import qemu
from clonefleet.liveprobe import fingerprint
from clonefleet.unlockd import boots

from .conftest import Lab
from .unlockd_checks import BOOT_SECONDS, steps_recorded, wait_for

UNIT = "clonefleet-unlockd.service"
DELIVERY = re.compile(r"Pubkey auth succeeded for 'root' with \S+ key (SHA256:[A-Za-z0-9+/=]+)")
UNLOCK_TABLE = "[unlock]\n"


def add_unlockers(lab: Lab, nodes: tuple[str, ...], store_url: str) -> None:
    """Name `nodes` as the fleet's unlockers, reaching the store at `store_url`: two keys
    added at the end of the [unlock] table, wherever it sits among the file's tables (its
    first line stays the policy, which `unlockd_checks.set_policy` rewrites)."""
    text = lab.fleet_path.read_text()
    start = text.index(UNLOCK_TABLE)
    following = re.search(r"(?m)^\[", text[start + len(UNLOCK_TABLE):])
    end = start + len(UNLOCK_TABLE) + following.start() if following else len(text)
    table = text[start:end].rstrip("\n")
    added = f"\nunlockers = {json.dumps(list(nodes))}\nstore_url = \"{store_url}\"\n"
    lab.fleet_path.write_text(text[:start] + table + added +
                              ("\n" + text[end:] if end < len(text) else ""))


def unlocker_fingerprints(lab: Lab) -> dict[str, str]:
    """Each granted node unlocker's key fingerprint, by node name."""
    listed = json.loads(lab.cli("--json", "keys", "unlockers").stdout)["unlockers"]
    assert all(entry["status"] == "granted" for entry in listed), listed
    return {entry["name"].removeprefix("node:"): fingerprint(entry["key"])
            for entry in listed if entry["name"].startswith("node:")}


def check_unlocker_service(lab: Lab, node: str) -> None:
    """The deployed unit runs under the node's systemd as a dynamic user, with the identity
    as a credential only the service sees."""
    with lab.shell(node) as shell:
        assert shell.run(f"systemctl is-active {UNIT}", check=False)[1].strip() == "active"
        shown = shell.run(f"systemctl show -p DynamicUser {UNIT}")[1]
        assert "DynamicUser=yes" in shown, shown
        # systemd's copy of the credential, for the running service only.
        assert shell.run(f"test -s /run/credentials/{UNIT}/identity", check=False)[0] == 0


def set_unlocker(lab: Lab, node: str, running: bool) -> None:
    with lab.shell(node) as shell:
        shell.run(f"systemctl {'start' if running else 'stop'} {UNIT}")


@dataclass
class Delivery:
    """One hard power cycle of the target, unlocked by the unlockers alone."""

    deliveries: list[str]  # fingerprints of the keys that logged into Dropbear
    unlocked_by: str  # the instance recorded on the boot (HOST:PID…)
    boot: boots.Boot
    seconds: float


class NodeUnlockers:
    """The target node and what the unlockers did to it."""

    def __init__(self, lab: Lab, target: str) -> None:
        self.lab, self.target = lab, target
        self.config = qemu.VmConfig.load(lab.state_dir / "lab" / target)

    def unlocks(self) -> int:
        return steps_recorded(self.lab, self.target, "unlockd unlock", "done")

    def confirmed(self) -> int:
        return steps_recorded(self.lab, self.target, "unlockd confirm sshd", "done")

    def console_size(self) -> int:
        return self.config.console_log.stat().st_size

    def power_cycle_and_wait(self) -> Delivery:
        """Power the target off and on behind clonefleet's back (nothing recorded as
        expected) and wait until an unlocker has unlocked it and seen its sshd."""
        lab, node = self.lab, self.lab.fleet.node(self.target)
        unlocks, confirmed = self.unlocks(), self.confirmed()
        offset = self.console_size()
        started = time.monotonic()
        lab.provider.power_off(node)
        lab.provider.boot_disk(node)
        wait_for(lambda: self.confirmed() > confirmed, 2 * BOOT_SECONDS,
                 f"an unlocker unlocking {self.target} and seeing its sshd",
                 lambda: self.console_since(offset)[-3000:])
        seconds = time.monotonic() - started
        assert self.unlocks() == unlocks + 1, "more than one unlock recorded for one boot"
        boot = boots.current_boot(lab.store, self.target)
        assert boot is not None and boot.status in (boots.UNLOCKED, boots.UP), boot
        # A last look at the console: a second delivery would have logged in by now (the
        # other instance's next pass came and went while sshd came up).
        return Delivery(DELIVERY.findall(self.console_since(offset)), boot.unlocked_by, boot,
                        seconds)

    def console_since(self, offset: int) -> str:
        with self.config.console_log.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
