"""A real Dropbear on a loopback port, set up like the initramfs one, for unlock tests.

Dropbear 2022.83 reads `~root/.ssh/authorized_keys` with no option to point elsewhere, so it
runs in a private mount namespace (`unshare --mount`) where a temporary folder is bind-mounted
over /root: the machine's own keys are never read or touched. Like the initramfs, every
login runs one forced command; here it is a stand-in for `cryptroot-unlock` that reads the
passphrase from stdin and answers with cryptroot-unlock's own messages. Everything else —
SSH, the host key, the per-address limit on unauthenticated connections — is Dropbear's own.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clonefleet.lab.qemu import free_port
from clonefleet.providers.base import SshAccess
from clonefleet.ssh import generate_ed25519

# Messages and behaviour of Debian 12's cryptroot-unlock (see clonefleet/unlock.py).
FAKE_CRYPTROOT_UNLOCK = """#!/bin/sh
# Reads the passphrase from stdin (no trailing newline) like cryptroot-unlock without a TTY.
# With a `hang_once` file beside it, the first call waits like the real one while nothing
# asks for a passphrase yet (the root device is not there).
if [ -e '{expected}.hang_once' ]; then
    rm -f '{expected}.hang_once'
    sleep 30
fi
# With a `device_at` file beside it (milliseconds since the epoch), the encrypted device
# appears only then (a RAID still assembling): every call waits for it, and keeps waiting
# after its client gave up, with the passphrase already on its stdin. The first to see the
# device reads its passphrase; a later call finds nothing asking and, like the real one on
# the lab VM, ends with exit 0 and says nothing.
if [ -e '{expected}.device_at' ]; then
    while [ $(($(date +%s%N) / 1000000)) -lt "$(cat '{expected}.device_at')" ]; do
        sleep 0.1
    done
    if ! mkdir '{expected}.opened' 2>/dev/null; then
        exit 0
    fi
fi
given=$(cat; printf x)
given=${{given%x}}
# Every passphrase read is counted beside it (`Dropbear.deliveries`): "ok" or "bad".
if [ "$given" = "$(cat '{expected}')" ]; then
    echo ok >> '{expected}.deliveries'
    echo "cryptsetup: root set up successfully"
    exit 0
fi
rmdir '{expected}.opened' 2>/dev/null
echo bad >> '{expected}.deliveries'
echo "cryptsetup failed, bad password or options?"
exit 1
"""

DROPBEAR_MAX_UNAUTH_PER_IP = 5  # Dropbear's compiled-in default (options.h)


def dropbear_available() -> bool:
    return all(shutil.which(tool) for tool in ("dropbear", "dropbearkey", "unshare", "mount"))


@dataclass
class Dropbear:
    folder: Path
    port: int
    host_key: str  # "ssh-ed25519 AAAA..."
    operator_key: Path
    passphrase: str
    process: subprocess.Popen[bytes] | None = None
    held: list[socket.socket] = field(default_factory=list)

    @property
    def access(self) -> SshAccess:
        return SshAccess("127.0.0.1", self.port)

    def start(self) -> None:
        home = self.folder / "home"
        script = (f"mount --bind {home} /root && exec dropbear -F -E -s -j -k -I 60 "
                  f"-p 127.0.0.1:{self.port} -r {self.folder / 'host_key'} "
                  f"-c {self.folder / 'cryptroot-unlock'} -P {self.folder / 'dropbear.pid'}")
        log = open(self.folder / "dropbear.log", "ab")  # noqa: SIM115 (lives with the process)
        self.process = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                         "sh", "-c", script], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=2) as probe:
                probe.settimeout(2)
                if probe.recv(64).startswith(b"SSH-"):
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"dropbear did not start: {self.log()}")

    def hold_unauthenticated(self, count: int = DROPBEAR_MAX_UNAUTH_PER_IP) -> None:
        """Open `count` connections that read the banner and then say nothing: Dropbear
        counts them as unauthenticated until they close."""
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.recv(64)
            self.held.append(sock)
        # Dropbear's parent learns of a child only once it forked it: give it a moment.
        time.sleep(0.3)

    def release_after(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.release)
        timer.start()
        return timer

    def release(self) -> None:
        while self.held:
            self.held.pop().close()

    def log(self) -> str:
        return (self.folder / "dropbear.log").read_text(errors="replace")

    def deliveries(self) -> list[str]:
        """One word per passphrase the stand-in read: "ok" (right) or "bad"."""
        path = self.folder / "expected.deliveries"
        return path.read_text().split() if path.exists() else []

    def authorize(self, public_line: str) -> None:
        """Let another key log in too (an unlocker's)."""
        with (self.folder / "home" / ".ssh" / "authorized_keys").open("a") as handle:
            handle.write(public_line.strip() + "\n")

    def hang_once(self) -> None:
        """The next cryptroot-unlock waits 30 s before reading (nothing asks yet)."""
        (self.folder / "expected.hang_once").touch()

    def device_appears_in(self, seconds: float) -> None:
        """The encrypted device shows up `seconds` from now (see FAKE_CRYPTROOT_UNLOCK)."""
        (self.folder / "expected.device_at").write_text(
            str(int((time.time() + seconds) * 1000)))

    def stop(self) -> None:
        self.release()
        if self.process is not None and self.process.poll() is None:
            # unshare and sh exec'd: this is Dropbear's listening process itself.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def make_dropbear(folder: Path, passphrase: str = "correct horse battery staple") -> Dropbear:
    """Prepare (not start) a Dropbear with a fresh host key and operator key in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(folder / "host_key")],
                   check=True, capture_output=True)
    shown = subprocess.run(["dropbearkey", "-y", "-f", str(folder / "host_key")],
                           check=True, capture_output=True, text=True).stdout
    host_key = next(line for line in shown.splitlines() if line.startswith("ssh-ed25519"))
    operator = generate_ed25519("test-operator")
    key_path = folder / "operator_key"
    key_path.write_text(operator.private_openssh)
    key_path.chmod(0o600)
    home = folder / "home"
    (home / ".ssh").mkdir(parents=True)
    home.chmod(0o700)
    (home / ".ssh").chmod(0o700)
    authorized = home / ".ssh" / "authorized_keys"
    authorized.write_text(operator.public_line + "\n")
    authorized.chmod(0o600)
    (folder / "expected").write_text(passphrase)
    script = folder / "cryptroot-unlock"
    script.write_text(FAKE_CRYPTROOT_UNLOCK.format(expected=folder / "expected"))
    script.chmod(0o755)
    return Dropbear(folder=folder, port=free_port(), host_key=" ".join(host_key.split()[:2]),
                    operator_key=key_path, passphrase=passphrase)


@contextlib.contextmanager
def running_dropbear(folder: Path, passphrase: str = "correct horse battery staple"
                     ) -> Iterator[Dropbear]:
    server = make_dropbear(folder, passphrase)
    server.start()
    try:
        yield server
    finally:
        server.stop()
