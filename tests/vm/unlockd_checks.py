"""unlockd and host-key rotation on a lab VM, fitted into reboots a module does anyway (each
reboot of a TCG guest costs minutes; these checks add probes, not reboots).

- `check_host_key_rotation`: `keys rotate-host-keys` on the booted node: the real sshd reload
  and `update-initramfs`; the next boot's Dropbear presents the new key.
- `UnlockdReboots`: the reboots of `raid_checks.check_boots_from_either_disk` as hard power
  cycles behind clonefleet's back (the provider's power off and on, nothing recorded as
  expected), with `clonefleet unlockd` running as its own process and no `clonefleet unlock`:
  for the first boot the controller pins another initramfs key than the node presents (the
  key from before `check_host_key_rotation`: to the controller the node's key changed),
  so unlockd sends nothing and alerts; after `keys repin` it unlocks the node by itself
  (policy "immediate"). The second boot, under policy "approve", waits until `clonefleet
  unlock --approve`.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import TracebackType

from webhook_fixture import Webhook

from clonefleet import nodefacts
from clonefleet.known_hosts import fleet_known_hosts, public_key_blob
from clonefleet.liveprobe import fingerprint

from .conftest import ROOT, Lab

INTERVAL = 5.0  # seconds between unlockd's passes here (15 by default)
BOOT_SECONDS = 1200.0  # power-on to Dropbear, or unlock to sshd, on a slow TCG guest


def set_policy(lab: Lab, policy: str) -> None:
    """The fleet file's `[unlock] unexpected` policy (the table must be there already)."""
    text = lab.fleet_path.read_text()
    changed, count = re.subn(r'(?m)^(\[unlock\]\nunexpected = )"[a-z-]+"$',
                             lambda match: f'{match.group(1)}"{policy}"', text)
    assert count == 1, f"no [unlock] table with a policy in {lab.fleet_path}"
    lab.fleet_path.write_text(changed)


def wait_for(condition: Callable[[], bool], seconds: float, what: str,
             describe: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:.0f} s. {describe()}")
        time.sleep(2)


class UnlockdProcess:
    """`clonefleet unlockd` on the controller, as the systemd unit runs it."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.log_path = lab.state_root / f"unlockd-{name}.log"
        self.lab = lab
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> UnlockdProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clonefleet", "--fleet", str(self.lab.fleet_path),
             "unlockd", "--interval", str(INTERVAL), "--confirm-timeout", str(BOOT_SECONDS)],
            env=self.lab.env, cwd=ROOT, stdout=log, stderr=log)
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def check_host_key_rotation(lab: Lab, node_name: str) -> tuple[str, str]:
    """Rotate both host keys of the booted node; return Dropbear's (old, new) keys."""
    before = nodefacts.load(lab.store, node_name)
    report = json.loads(lab.cli("--json", "keys", "rotate-host-keys", node_name).stdout)
    assert [entry["role"] for entry in report["keys"]] == ["sshd", "dropbear"], report
    after = nodefacts.load(lab.store, node_name)
    assert after.ssh_host_key != before.ssh_host_key
    assert after.dropbear_host_key != before.dropbear_host_key
    with lab.shell(node_name) as shell:  # pinned to the new sshd key
        shown = shell.run("ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key")[1]
        assert public_key_blob(shown) == public_key_blob(str(after.ssh_host_key))
        shown = shell.run("dropbearkey -y -f "
                          "/etc/dropbear/initramfs/dropbear_ed25519_host_key")[1]
        assert public_key_blob(str(after.dropbear_host_key)) in shown
        assert shell.run("ls /etc/ssh /etc/dropbear/initramfs | grep -c '\\.new' || true"
                         )[1].strip() == "0"
    return (public_key_blob(str(before.dropbear_host_key)),
            public_key_blob(str(after.dropbear_host_key)))


def steps_recorded(lab: Lab, node: str, step: str, status: str | None = None) -> int:
    """How many `step` records the node has (with `status`, if given)."""
    return sum(record.step == step and status in (None, record.status)
               for record in lab.store.steps(node))


class UnlockdReboots:
    """The `unlock` of `check_boots_from_either_disk`: unlockd, not an operator (see above)."""

    def __init__(self, lab: Lab, node_name: str, hook: Webhook,
                 dropbear_keys: tuple[str, str]) -> None:
        """`dropbear_keys`: (the key the controller pins for the first boot, the key the
        node's initramfs presents)."""
        self.lab, self.node, self.hook = lab, node_name, hook
        self.old_key, self.new_key = dropbear_keys

    def __call__(self, index: int, power_cycle: Callable[[], None]) -> None:
        (self.changed_key_then_immediate if index == 0 else self.approve)(power_cycle)

    def unlocks(self) -> int:
        return steps_recorded(self.lab, self.node, "unlockd unlock")

    def confirmed(self) -> int:
        return steps_recorded(self.lab, self.node, "unlockd confirm sshd", "done")

    def changed_key_then_immediate(self, power_cycle: Callable[[], None]) -> None:
        lab, node = self.lab, self.node
        # The controller pins another initramfs key than the node presents.
        nodefacts.replace_host_keys(lab.store, node, fleet_known_hosts(lab.state_dir),
                                    {nodefacts.DROPBEAR: self.old_key})
        set_policy(lab, "immediate")
        unlocks, confirmed = self.unlocks(), self.confirmed()
        with UnlockdProcess(lab, "first") as unlockd:
            power_cycle()
            wait_for(lambda: any("possible impostor" in title for title in self.hook.titles()),
                     BOOT_SECONDS, "unlockd's alert about the changed Dropbear key",
                     unlockd.log)
            alert = next(message for message in self.hook.received
                         if "possible impostor" in str(message.get("title")))
            assert fingerprint(self.new_key) in str(alert.get("message")), alert
            time.sleep(3 * INTERVAL)  # a few more passes: still nothing sent
            assert self.unlocks() == unlocks, unlockd.log()
            assert sum("possible impostor" in title for title in self.hook.titles()) == 1
            live = json.loads(lab.cli("--json", "status", "--live", node, check=False).stdout)
            assert "host-key-mismatch" in json.dumps(live), live
            # The deliberate path after an out-of-band check: pin what the node presents.
            repinned = json.loads(lab.cli("--json", "keys", "repin", node, "--yes").stdout)
            assert repinned["changes"] == 1, repinned
            wait_for(lambda: self.confirmed() > confirmed, 2 * BOOT_SECONDS,
                     "unlockd unlocking the node and seeing its sshd", unlockd.log)
            assert self.unlocks() == unlocks + 1, unlockd.log()
            assert "unexpected reboot; policy: unlock at once" in unlockd.log()

    def approve(self, power_cycle: Callable[[], None]) -> None:
        lab, node = self.lab, self.node
        set_policy(lab, "approve")
        unlocks, confirmed = self.unlocks(), self.confirmed()
        with UnlockdProcess(lab, "second") as unlockd:
            power_cycle()
            wait_for(lambda: "policy: waits for `clonefleet unlock --approve" in unlockd.log(),
                     BOOT_SECONDS, "unlockd waiting for an approval", unlockd.log)
            time.sleep(3 * INTERVAL)
            assert self.unlocks() == unlocks, unlockd.log()
            lab.cli("unlock", "--approve", node)
            wait_for(lambda: self.confirmed() > confirmed, 2 * BOOT_SECONDS,
                     "unlockd unlocking the approved node and seeing its sshd", unlockd.log)
            assert self.unlocks() == unlocks + 1, unlockd.log()
