"""Remote unlock: Dropbear in the initramfs, pinned host key, passphrase from the keystore.

The passphrase goes on the SSH channel's stdin with no trailing newline: cryptroot-unlock's
non-interactive mode copies stdin verbatim into the passfifo, so a newline would become part
of the passphrase. Its messages become distinct errors so scripts can react to each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clonefleet.errors import UnlockError
from clonefleet.providers.base import SshAccess
from clonefleet.retry import retry
from clonefleet.ssh import ConnectionFailed, RemoteCommandTimedOut, RemoteShell


class UnlockNotReady(UnlockError):
    """The initramfs is not (yet) asking for the passphrase: askpass starts a little after
    Dropbear, and later still when the root device is slow to appear (a degraded RAID)."""

    transient = True


class BadPassphrase(UnlockError):
    exit_code = 13


class TooManyTries(UnlockError):
    exit_code = 14


def interpret(status: int | None, output: str) -> str:
    """Map cryptroot-unlock's exit status and messages to success or a distinct error."""
    if "set up successfully" in output:
        return output.strip().splitlines()[-1]
    if "maximum number of tries exceeded" in output:
        raise TooManyTries("cryptroot-unlock: maximum number of tries exceeded; the node "
                           "dropped to its initramfs shell: reset it from the provider")
    if "bad password or options" in output:
        raise BadPassphrase("cryptroot-unlock rejected the passphrase (bad password); the "
                            "keystore entry does not match this node's LUKS header")
    if "Timeout reached while waiting for askpass" in output:
        raise UnlockNotReady("cryptroot-unlock: nothing is waiting for a passphrase (timeout "
                             "waiting for askpass); the node may already be unlocked")
    if "Try again later" in output:
        raise UnlockNotReady("cryptroot-unlock: busy, try again later")
    if status is None:
        # Dropbear is killed when the initramfs hands over to the real system, which can
        # race with the final message: the caller confirms through sshd.
        return "connection closed by the initramfs (likely unlocked)"
    if status == 0:
        # Nothing left to ask for: an earlier attempt's passphrase, still on the stdin of a
        # cryptroot-unlock whose connection timed out, opened the volume once the device
        # appeared (a slow RAID assembly). The caller confirms through sshd.
        return "cryptroot-unlock found nothing waiting for a passphrase (likely unlocked)"
    raise UnlockError(f"cryptroot-unlock failed (exit {status}): {output.strip()[-300:]}")


def send_passphrase(access: SshAccess, key_path: Path, known_hosts: Path,
                    passphrase: str, timeout: float = 120) -> str:
    """Connect to Dropbear (refusing any key but the one pinned for it in `known_hosts`, the
    fleet's file) and unlock."""
    with RemoteShell(access, key_path, known_hosts=known_hosts,
                     what="Dropbear (initramfs)") as shell:
        try:
            status, out, err = shell.run("cryptroot-unlock", input_data=passphrase.encode(),
                                         check=False, timeout=timeout)
        except ConnectionFailed:
            return interpret(None, "")
        except RemoteCommandTimedOut:
            # cryptroot-unlock waits for cryptsetup to ask, and cryptsetup asks only once the
            # encrypted device exists: a degraded RAID (a dead disk) or a slow boot keeps it
            # waiting. Not an error yet: try again until the caller's deadline.
            raise UnlockNotReady(f"cryptroot-unlock still waiting after {timeout:.0f} s: the "
                                 "initramfs is not asking for the passphrase yet (its root "
                                 "device is not there: a slow or degraded RAID?)") from None
        # paramiko reports -1 when the channel closed without an exit status
        return interpret(None if status == -1 else status, out + err)


def unlock(access: SshAccess, key_path: Path, known_hosts: Path, passphrase: str, *,
           timeout: float, what: str = "node",
           log: Callable[[str], None] | None = None, attempt_timeout: float = 120) -> str:
    """Send the passphrase to Dropbear, retrying what passes by itself until `timeout`.

    Dropbear drops a new connection during the banner while too many earlier ones from the
    same address are still unauthenticated (5 by default, and behind NAT every connection
    comes from one address), and askpass may not be asking yet. Both are retried with the
    shared policy; a changed host key or a rejected passphrase fails on the first attempt.
    """

    def note(attempt: int, error: BaseException, delay: float) -> None:
        if log is not None:
            log(f"{what}: unlock attempt {attempt} failed ({error}); trying again in "
                f"{delay:.0f} s")

    return retry(lambda: send_passphrase(access, key_path, known_hosts, passphrase,
                                         timeout=attempt_timeout),
                 what=f"unlock {what} through Dropbear at {access}", timeout=timeout,
                 on_retry=note)
