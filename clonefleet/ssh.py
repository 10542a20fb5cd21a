"""SSH plumbing: the operator key, per-node host keys, and a small paramiko shell.

Host keys are pinned: a connection to a node (sshd or Dropbear) is accepted only when the
server presents exactly the key recorded at install time, read from the fleet's known_hosts
file (`clonefleet.known_hosts`, the same file pyinfra checks against), and compared by
paramiko itself as it does for any known_hosts. Rescue systems are created fresh on every
boot: their key is pinned to the fingerprints the provider's API reported
(`SshAccess.host_keys`) when it reported any, and otherwise accepted on first use and logged.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.pkey import UnknownKeyType

from clonefleet.atomic import write_atomic
from clonefleet.errors import (
    ClonefleetError,
    ConfigError,
    HostKeyMismatchError,
    HostKeyNotPinnedError,
)
from clonefleet.known_hosts import KnownHosts, host_pattern, public_key_blob
from clonefleet.providers.base import SshAccess
from clonefleet.retry import RetryPolicy, TimedOut, retry, wait_until


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str
    public_line: str  # "ssh-ed25519 AAAA..."


def generate_ed25519(comment: str = "") -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private, f"{public} {comment}".strip())


@dataclass(frozen=True)
class OperatorKey:
    path: Path
    public_line: str


def ensure_operator_key(configured: str, state_dir: Path) -> OperatorKey:
    """The fleet's operator key: the configured one, or one created under the state folder."""
    if configured:
        path = Path(configured).expanduser()
        public = path.with_name(path.name + ".pub")
        if not path.exists() or not public.exists():
            raise ConfigError(f"fleet.ssh_key {path} (and {public.name}) not found; fix the "
                              "path or leave ssh_key empty to let clonefleet create one")
        return OperatorKey(path, public.read_text().strip())
    path = state_dir / "id_ed25519"
    public = state_dir / "id_ed25519.pub"
    line = _public_line(public) if path.exists() else None
    if line is None:
        # Several nodes (or a node's rescue boot and its layer build, which run at once) may
        # need the key first at the same moment: one creates it, the others wait and read it.
        # Readers outside the lock trust only a complete public line (the files are written
        # by rename, but a copy made by hand or a crash may leave a torn one).
        state_dir.mkdir(parents=True, exist_ok=True)
        with open(state_dir / "id_ed25519.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            line = _create_or_repair_operator_key(path, public)
    return OperatorKey(path, line)


def _public_line(public: Path) -> str | None:
    """The public key line in `public`, or None when it is missing or not a whole key line."""
    try:
        line = public.read_text().strip()
    except FileNotFoundError:
        return None
    parts = line.split()
    return line if len(parts) >= 2 and parts[0] == "ssh-ed25519" else None


def _create_or_repair_operator_key(path: Path, public: Path) -> str:
    """Under the key's lock: a new key pair when there is no private key, else the public
    line derived again from the private key (a crash may have left it torn or missing).
    Each file is written to a temporary name and renamed, the private one last."""
    if path.exists():
        existing = _public_line(public)
        if existing is not None:
            return existing
        loaded = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        line = loaded.public_key().public_bytes(
            serialization.Encoding.OpenSSH,
            serialization.PublicFormat.OpenSSH).decode() + " clonefleet-operator"
        write_atomic(public, line + "\n", 0o644)
        return line
    pair = generate_ed25519("clonefleet-operator")
    write_atomic(public, pair.public_line + "\n", 0o644)
    write_atomic(path, pair.private_openssh, 0o600)
    return pair.public_line


def key_fingerprints(key_bytes: bytes) -> tuple[str, str]:
    """A host key's SHA256 fingerprint as OpenSSH prints it ("SHA256:<base64, unpadded>")
    and its MD5 one ("MD5:aa:bb:..."), both as providers' APIs report them."""
    sha256 = base64.b64encode(hashlib.sha256(key_bytes).digest()).decode().rstrip("=")
    md5 = hashlib.md5(key_bytes, usedforsecurity=False).hexdigest()
    return f"SHA256:{sha256}", "MD5:" + ":".join(md5[i:i + 2] for i in range(0, 32, 2))


def public_key_md5(public_line: str) -> str | None:
    """The MD5 fingerprint Hetzner's APIs use for an OpenSSH public key line ("aa:bb:..",
    lowercase hex of the key blob), or None when the line is not a public key."""
    parts = public_line.split()
    if len(parts) < 2:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        return None
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[index:index + 2] for index in range(0, len(digest), 2))


def normalize_fingerprint(text: str) -> str:
    """'ED25519 SHA256:abc', 'SHA256:abc', 'md5:AA:BB..' or bare 'aa:bb:..' → one form."""
    token = text.split()[-1] if text.split() else ""
    kind, _, value = token.partition(":")
    if kind.upper() == "SHA256":
        return f"SHA256:{value.rstrip('=')}"
    if kind.upper() == "MD5":
        return f"MD5:{value.lower()}"
    return f"MD5:{token.lower()}"  # a bare colon-separated hex digest is MD5


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """What to do with a key when nothing is pinned for the address (paramiko itself refuses a
    key that differs from a pinned one). A pinned connection refuses; a rescue system's key is
    checked against the provider's fingerprints, or else trusted on first use."""

    def __init__(self, pinned_in: str | None, what: str, seen: list[str],
                 fingerprints: tuple[str, ...] = ()) -> None:
        self.pinned_in = pinned_in
        self.fingerprints = {normalize_fingerprint(text) for text in fingerprints}
        self.what = what
        self.seen = seen

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        self.seen.append(f"{key.get_name()} {key.get_base64()}")
        if self.pinned_in is not None:
            raise HostKeyNotPinnedError(
                f"{self.what} at {hostname} presented host key {_fingerprint(key)}, but no key "
                f"is pinned for {hostname} in {self.pinned_in}; refusing to connect (was the "
                "node installed by this controller? `clonefleet provision` pins its keys)")
        if self.fingerprints and not self.fingerprints & set(key_fingerprints(key.asbytes())):
            raise HostKeyMismatchError(
                f"{self.what} at {hostname} presented host key {_fingerprint(key)}, which is "
                "none of the fingerprints the provider's API reported "
                f"({', '.join(sorted(self.fingerprints))}); refusing to connect (possible "
                "man-in-the-middle: investigate, then boot the rescue system again)")


def _pinned_node(known_hosts: Path | None, access: SshAccess) -> str:
    """The node the fleet's known_hosts pins `access` for, or ""."""
    if known_hosts is None:
        return ""
    pattern = host_pattern(access.host, access.port)
    return next((entry.node for entry in KnownHosts(known_hosts).entries()
                 if entry.pattern == pattern), "")


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key_fingerprints(key.asbytes())[0]}"


def _public_key(line: str) -> tuple[str, paramiko.PKey]:
    """An OpenSSH public key line as paramiko's (type, key), for its host key table."""
    parts = public_key_blob(line).split()
    try:
        key = paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except (IndexError, ValueError, paramiko.SSHException, UnknownKeyType):
        raise ConfigError(f"pinned host key {line[:60]!r} is not an OpenSSH public key "
                          "line") from None
    return key.get_name(), key


class RemoteShell:
    """One SSH session used for many commands."""

    def __init__(self, access: SshAccess, key_path: Path, *, what: str,
                 known_hosts: Path | None = None, pinned: str | None = None,
                 timeout: float = 20) -> None:
        """`known_hosts`: the fleet's file holding the keys pinned at install time (see
        `clonefleet.nodefacts.load_pinned`); the server must present the key pinned there for
        its `[host]:port`. `pinned`: one public key line instead, for a caller holding just
        that key (tests, ad-hoc tools). With neither, the key is checked against
        `access.host_keys` (fingerprints from the provider's API) if there are any, and
        otherwise trusted on first use (`seen_keys` says which it was)."""
        if known_hosts is not None and pinned is not None:
            raise ValueError("give known_hosts or pinned, not both")
        self.access = access
        self.what = what
        self.seen_keys: list[str] = []
        self.client = paramiko.SSHClient()
        pinned_in = None
        if known_hosts is not None:
            pinned_in = str(known_hosts)
            if known_hosts.exists():
                # The "system" set: paramiko reads it and never writes it back.
                self.client.load_system_host_keys(str(known_hosts))
        elif pinned is not None:
            pinned_in = "the given key line"
            self.client.get_host_keys().add(host_pattern(access.host, access.port),
                                            *_public_key(pinned))
        self.client.set_missing_host_key_policy(
            _HostKeyPolicy(pinned_in, what, self.seen_keys, access.host_keys))
        try:
            self.client.connect(access.host, port=access.port, username=access.user,
                                key_filename=str(key_path), timeout=timeout,
                                banner_timeout=timeout, auth_timeout=timeout,
                                allow_agent=False, look_for_keys=False)
        except ClonefleetError:
            self.client.close()
            raise
        except paramiko.BadHostKeyException as error:
            self.client.close()
            raise HostKeyMismatchError(
                f"{what} at {host_pattern(access.host, access.port)} presented host key "
                f"{_fingerprint(error.key)}, which is not the key pinned at install time "
                f"({_fingerprint(error.expected_key)} per {pinned_in}); refusing to connect "
                "(possible man-in-the-middle or a reinstalled node): check the key on the "
                "node's own console (out of band), then re-pin with `clonefleet keys repin "
                f"{_pinned_node(known_hosts, access) or 'NODE'}`") from None
        except paramiko.AuthenticationException as error:
            self.client.close()
            raise AccessDenied(f"{what} at {access} refused the operator key "
                               f"{key_path} ({error}); check the fleet's ssh_key") from None
        except (paramiko.SSHException, OSError, EOFError) as error:
            self.client.close()
            raise ConnectionFailed(f"cannot reach {what} at {access}: "
                                   f"{_describe(error)}") from None

    @property
    def host_key_fingerprint(self) -> str:
        transport = self.client.get_transport()
        assert transport is not None
        key = transport.get_remote_server_key()
        return _fingerprint(key)

    @property
    def host_key(self) -> str:
        transport = self.client.get_transport()
        assert transport is not None
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"

    def run(self, command: str, *, input_data: bytes | None = None, check: bool = True,
            timeout: float = 600, what: str = "") -> tuple[int, str, str]:
        """Run `command`; feed `input_data` on stdin (then EOF); return (status, out, err)."""
        with self._bounded(command, timeout):
            channel = self._channel(command, timeout)
            if input_data is not None:
                channel.sendall(input_data)
            channel.shutdown_write()
            status, out, err = _collect(channel, timeout)
        if check and status != 0:
            tail = "\n".join((out + err).strip().splitlines()[-12:])
            raise RemoteCommandFailed(
                f"{what or command.split()[0]} failed on {self.what} (exit {status}): {tail}")
        return status, out, err

    def stream(self, command: str, source: IO[bytes], *, timeout: float = 3600,
               progress: Callable[[int], None] | None = None, what: str = "") -> str:
        """Run `command` with a large file on its stdin, reporting bytes sent."""
        with self._bounded(command, timeout):
            channel = self._channel(command, timeout)
            sent = 0
            while chunk := source.read(1 << 20):
                channel.sendall(chunk)
                sent += len(chunk)
                if progress:
                    progress(sent)
            channel.shutdown_write()
            status, out, err = _collect(channel, timeout)
        if status != 0:
            tail = "\n".join((out + err).strip().splitlines()[-12:])
            raise RemoteCommandFailed(f"{what or command} failed on {self.what} "
                                      f"(exit {status}): {tail}")
        return out

    @contextmanager
    def _bounded(self, command: str, timeout: float) -> Iterator[None]:
        """Bound everything a command does, not only the wait for its output: paramiko's
        `exec_command` waits for the server's answer with no timeout, and a server that stops
        answering without closing the connection (Dropbear while its initramfs hands over to
        the real system, a frozen guest) would hold the caller forever. Past `timeout` plus a
        grace the connection is closed, which ends any wait on it."""
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            self.client.close()

        watchdog = threading.Timer(timeout + WATCHDOG_GRACE, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            yield
        except (paramiko.SSHException, OSError, EOFError) as error:
            if expired.is_set():
                raise RemoteCommandTimedOut(
                    f"{command.split()[0]} on {self.what} did not finish within "
                    f"{timeout + WATCHDOG_GRACE:.0f} s; the connection was closed") from None
            raise ConnectionFailed(f"connection to {self.what} at {self.access} was lost "
                                   f"({_describe(error)})") from None
        finally:
            watchdog.cancel()

    def _channel(self, command: str, timeout: float) -> paramiko.Channel:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionFailed(f"connection to {self.what} at {self.access} was lost")
        channel = transport.open_session(timeout=30)
        channel.settimeout(timeout)
        channel.exec_command(command)
        return channel

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RemoteShell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# How long past its own timeout a command's connection is closed (see RemoteShell._bounded).
WATCHDOG_GRACE = 10.0

# Command output is read as soon as it is there; between reads the channel is checked often.
OUTPUT_POLL = RetryPolicy(first=0.05, cap=0.05, factor=1.0, jitter=0.0)


def _collect(channel: paramiko.Channel, timeout: float) -> tuple[int, str, str]:
    out, err = bytearray(), bytearray()

    def finished() -> bool | None:
        while channel.recv_ready():
            out.extend(channel.recv(65536))
        while channel.recv_stderr_ready():
            err.extend(channel.recv_stderr(65536))
        if channel.exit_status_ready() and not channel.recv_ready() \
                and not channel.recv_stderr_ready():
            return True
        return None

    try:
        wait_until(finished, what="remote command", timeout=timeout, policy=OUTPUT_POLL,
                   transient=lambda error: False)
    except TimedOut:
        channel.close()
        raise RemoteCommandTimedOut(f"remote command timed out after {timeout:.0f} s") from None
    status = channel.recv_exit_status()
    channel.close()
    return status, out.decode(errors="replace"), err.decode(errors="replace")


def _describe(error: BaseException) -> str:
    """A one-line cause: some library errors have an empty message (EOFError(), timeouts)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class ConnectionFailed(ClonefleetError):
    """The SSH connection could not be made or was lost (refused, reset, EOF or timeout
    during the banner): worth retrying while the deadline allows."""

    exit_code = 11
    transient = True


class AccessDenied(ConnectionFailed):
    """The server answered but refused the operator key: retrying cannot help."""

    transient = False


class RemoteCommandFailed(ClonefleetError):
    exit_code = 12


class RemoteCommandTimedOut(RemoteCommandFailed):
    """The command did not finish in time (it may still be waiting for something)."""


def wait_for_ssh(connect: Callable[[], RemoteShell], timeout: float,
                 describe: str) -> RemoteShell:
    """Retry `connect` with the shared policy until it succeeds or `timeout` passes; a host
    key mismatch or a refused key fails at once."""
    return retry(connect, what=f"connect to {describe}", timeout=timeout)
