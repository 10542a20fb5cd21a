"""The hetzner-robot driver: Hetzner dedicated servers through the Robot webservice.

Invariants:
- Robot servers are ordered and cancelled by people. The driver adopts an existing server by
  number or name (`robot_server` in the node's table, else `server_id`) and never creates or
  cancels one.
- Robot is synchronous: a reset answers before the machine reboots. Every reboot is confirmed
  over SSH, and a rescue boot is recognised by the activation being consumed (it applies to
  exactly one boot) before SSH is trusted to be the rescue system, not the old one going down.
- Where Robot publishes the rescue system's host key fingerprints (`/boot/{n}/rescue/last`),
  the key the rescue presents must be one of them; otherwise it is trusted on first use and
  the log says so.
- A failure between activating rescue and the reset disarms rescue again, and if even that
  fails the error names the server left with rescue armed and how to disarm it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import paramiko

from clonefleet.errors import ClonefleetError, ConfigError, HostKeyMismatchError, ProviderError
from clonefleet.inventory import Node
from clonefleet.providers.base import (
    InitramfsNetwork,
    ProviderConfig,
    ServerInfo,
    ServerStatus,
    SshAccess,
    static_network,
)
from clonefleet.providers.robot_client import (
    DEFAULT_URL,
    RETRY_POLICY,
    Rescue,
    RobotApiError,
    RobotClient,
    RobotServer,
    md5_fingerprint,
)
from clonefleet.retry import POLL, RetryPolicy, TimedOut, wait_until
from clonefleet.ssh import key_fingerprints

DRIVER = "hetzner-robot"
SSH_PORT = 22
UNLOCK_PORT = 2222  # Dropbear in the initramfs (clonefleet.image.base.DROPBEAR_PORT)
# Robot's dedicated servers use many NICs; the installed initramfs needs the right one.
NIC_MODULES = ("igb", "e1000e", "r8169", "ixgbe", "i40e", "ice", "bnxt_en", "mlx5_core")
CONSOLE_HINT = "Robot → Server → {number} → Rescue"


class RescueArmed(ProviderError):
    """Rescue is (or may be) armed on a server after a failed step: the user must know."""


class _NotYet(ClonefleetError):
    transient = True


class HetznerRobotProvider:
    # firmware and RAID controllers take minutes: see boot_timeout in __init__
    name = DRIVER

    def __init__(self, config: ProviderConfig, state_dir: Path,
                 log: Callable[[str], None] = print, *,
                 env: Mapping[str, str] | None = None, boot_timeout: float = 900.0,
                 in_process_timeout: float = 600.0, poll: RetryPolicy = POLL,
                 retry_timeout: float = 120.0, retry_policy: RetryPolicy = RETRY_POLICY,
                 probe_patience: float = 10.0) -> None:
        self.config = config
        self.name = config.name or DRIVER
        self.settings = config.settings
        self.state_dir = state_dir / "providers" / self.name
        self.log = log
        self.env = os.environ if env is None else env
        self.boot_timeout, self.in_process_timeout = boot_timeout, in_process_timeout
        self.poll = poll
        self.retry_timeout, self.retry_policy = retry_timeout, retry_policy
        self.probe_patience = probe_patience
        self._client: RobotClient | None = None
        self._numbers: dict[str, int] = {}

    # -- settings and the client -----------------------------------------------------------

    def _setting(self, key: str, default: str) -> str:
        value = self.settings.get(key)
        return str(value) if value else default

    @property
    def client(self) -> RobotClient:
        if self._client is None:
            user_env = self._setting("user_env", "HETZNER_ROBOT_USER")
            password_env = self._setting("password_env", "HETZNER_ROBOT_PASSWORD")
            missing = [name for name in (user_env, password_env) if not self.env.get(name)]
            if missing:
                raise ConfigError(
                    f"provider {self.name!r} (hetzner-robot) needs the Robot webservice login "
                    f"in {' and '.join(missing)}; export "
                    f"{'them' if len(missing) > 1 else 'it'} (Robot → Settings → Webservice "
                    "and app settings)")
            self._client = RobotClient(
                self._setting("api_url", DEFAULT_URL), self.env[user_env],
                self.env[password_env], credentials_hint=f" from ${user_env}/${password_env}",
                retry_timeout=self.retry_timeout, policy=self.retry_policy, log=self.log)
        return self._client

    # -- which server ----------------------------------------------------------------------

    def _reference(self, node: Node) -> int | str:
        settings: Mapping[str, Any] = node.provider_settings
        reference = settings.get("robot_server") or node.server_id
        if reference in (None, ""):
            raise ConfigError(f"node {node.name}: no Robot server to adopt; set robot_server "
                              "= <server number or name> in its table of the fleet file")
        if isinstance(reference, int) or str(reference).isdigit():
            return int(reference)
        return str(reference)

    def _server(self, node: Node) -> RobotServer:
        reference = self._reference(node)
        number = self._numbers.get(node.name)
        if number is None and isinstance(reference, int):
            number = reference
        if number is not None:
            try:
                server = self.client.server(number)
            except RobotApiError as error:
                if error.code == "SERVER_NOT_FOUND":
                    raise ProviderError(f"node {node.name}: Robot server {number} does not "
                                        f"exist on this account; {self._known()}") from None
                raise
        else:
            matches = [server for server in self.client.servers() if server.name == reference]
            if not matches:
                raise ProviderError(f"node {node.name}: no Robot server is named "
                                    f"{reference!r}; {self._known()}")
            if len(matches) > 1:
                numbers = ", ".join(str(server.number) for server in matches)
                raise ProviderError(f"node {node.name}: several Robot servers are named "
                                    f"{reference!r} ({numbers}); set robot_server to the "
                                    "number instead")
            server = matches[0]
        self._numbers[node.name] = server.number
        return server

    def _known(self) -> str:
        servers = self.client.servers()
        if not servers:
            return "this Robot account has no servers (order one in Robot first)"
        listed = ", ".join(f"{server.number} ({server.name or 'unnamed'})" for server in servers)
        return f"set robot_server to one of: {listed}"

    def _ready(self, node: Node) -> RobotServer:
        """The server, once Robot no longer shows a job on it ("in process")."""
        server = self._server(node)
        if server.status == "ready":
            return server
        self.log(f"{node.name}: Robot server {server.number} is {server.status!r}; waiting")
        seen = [server.status]

        def check() -> RobotServer | None:
            current = self.client.server(server.number)
            seen.append(current.status)
            return current if current.status == "ready" else None

        try:
            return wait_until(check, what=f"{node.name}: Robot server {server.number} to be "
                              "ready", timeout=self.in_process_timeout, policy=self.poll,
                              describe=lambda: f"status {seen[-1]!r}")
        except ClonefleetError as error:
            raise ProviderError(f"{error}; Robot shows a job on it (an order, a cancellation "
                                "or a technician): wait until Robot shows it ready, then run "
                                "the command again") from None

    # -- state the API cannot tell ---------------------------------------------------------

    def _state_path(self, node: Node) -> Path:
        return self.state_dir / f"{node.name}.json"

    def _recorded(self, node: Node) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._state_path(node).read_text())
            return data
        except (FileNotFoundError, ValueError):
            return {}

    def _record(self, node: Node, **values: Any) -> None:
        path = self._state_path(node)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**self._recorded(node), **values}
        path.write_text(json.dumps(data, indent=2) + "\n")

    # -- protocol ------------------------------------------------------------------------

    def ensure_server(self, node: Node) -> ServerInfo:
        """Adopt the node's Robot server; never order one."""
        return self.info(node)

    def info(self, node: Node) -> ServerInfo:
        server = self._server(node)
        rescue = self.client.rescue(server.number)
        return self._info(node.name, server, rescue, self._recorded(node).get("mode", ""))

    def _info(self, node_name: str, server: RobotServer, rescue: Rescue | None,
              mode: str) -> ServerInfo:
        status: ServerStatus
        if server.status != "ready" or (rescue is not None and rescue.active):
            # A job is running, or a rescue activation waits for its reset.
            status = "starting"
        elif mode in ("rescue", "off"):
            status = "rescue" if mode == "rescue" else "off"
        else:
            status = "disk"
        details = {"number": str(server.number), "name": server.name,
                   "product": server.product, "dc": server.dc, "robot_status": server.status,
                   "ipv6_net": server.ipv6_net}
        if rescue is not None:
            details["rescue"] = "armed" if rescue.active else "off"
        return ServerInfo(node=node_name, server_id=str(server.number), status=status,
                          ssh=self.config.route(SshAccess(server.ip, SSH_PORT)),
                          unlock=self.config.route(SshAccess(server.ip, UNLOCK_PORT)),
                          nic_modules=NIC_MODULES, details=details,
                          forwarded_ports=self.config.forwards(server.ip))

    def boot_rescue(self, node: Node, ssh_public_keys: list[str]) -> SshAccess:
        server = self._ready(node)
        self._check_reset_type(server, node)  # before arming anything
        fingerprints = self._ensure_keys(ssh_public_keys)
        current = self.client.rescue(server.number)
        if current.active:
            # A stale activation (other keys, unknown password): replace it with ours.
            self.log(f"{node.name}: rescue was already armed on Robot server "
                     f"{server.number}; re-arming it with the operator key")
            self.client.deactivate_rescue(server.number)
        previous_boot = self._last_boot_time(server.number)
        try:
            self.client.activate_rescue(server.number, fingerprints)
        except RobotApiError as error:
            if error.code != "BOOT_ALREADY_ENABLED":
                raise ProviderError(f"{node.name}: activating rescue on Robot server "
                                    f"{server.number} failed: {error}") from None
            # A retried POST whose first attempt went through: check it carries our keys.
            armed = self.client.rescue(server.number)
            if not set(fingerprints) <= set(armed.authorized_keys):
                raise self._armed_error(node, server, f"rescue was armed by someone else "
                                        f"meanwhile ({error})") from None
        self.log(f"{node.name}: rescue armed on Robot server {server.number}; "
                 f"{self._reset_type()} reset")
        self._record(node, mode="", rescue_armed=True)
        try:
            self._reset(server, node)
        except ClonefleetError as error:
            raise self._disarm_after_failure(node, server, error) from None
        self._wait_consumed(node, server, previous_boot)
        last = self.client.last_rescue(server.number)
        access = self.config.route(SshAccess(server.ip, SSH_PORT))
        host_keys = last.host_keys
        if host_keys:
            self.log(f"{node.name}: Robot published {len(host_keys)} rescue host key "
                     "fingerprint(s); pinning them")
        try:
            self.wait_ready(access, node, self.boot_timeout, "rescue system ssh",
                            host_keys=host_keys)
        except TimedOut as error:
            raise ProviderError(f"{error}; Robot says server {server.number} booted its rescue "
                                "system but SSH does not answer: look at it in Robot (or its "
                                f"KVM console), then run `clonefleet provision {node.name}` "
                                "again") from None
        if not host_keys:
            self.log(f"{node.name}: Robot published no rescue host key; trusting the rescue "
                     "system's key on first use")
        self._record(node, mode="rescue", rescue_armed=False)
        return _with_host_keys(access, host_keys)

    def boot_disk(self, node: Node) -> None:
        server = self._ready(node)
        if self.client.rescue(server.number).active:
            self.log(f"{node.name}: disarming rescue on Robot server {server.number}")
            self.client.deactivate_rescue(server.number)
        self._record(node, rescue_armed=False)
        self._reset(server, node)
        self._record(node, mode="disk")
        # Confirm the reboot: the installed system's first listener is Dropbear.
        self.wait_ready(self.config.route(SshAccess(server.ip, UNLOCK_PORT)), node,
                        self.boot_timeout, "Dropbear (unlock) after booting the disk")

    def reset(self, node: Node) -> None:
        server = self._ready(node)
        self._reset(server, node)

    def power_on(self, node: Node) -> bool:
        """Robot has no power-on call and does not report whether a server is on. A server
        this driver powered off (`power_long`) gets a short power-button press (reset type
        `power`, which starts a server that is off). Otherwise the press could shut a
        running server down, so: if sshd or Dropbear answers it is on and left alone; if
        neither answers, the configured reset (`hw` by default) restarts it. Rescue is
        disarmed first, so the server boots its disk."""
        server = self._ready(node)
        known_off = self._recorded(node).get("mode") == "off"
        if not known_off and any(
                _banner(self.config.route(SshAccess(server.ip, port)), self.probe_patience)
                for port in (SSH_PORT, UNLOCK_PORT)):
            return False
        if self.client.rescue(server.number).active:
            self.log(f"{node.name}: disarming rescue on Robot server {server.number}")
            self.client.deactivate_rescue(server.number)
        self._record(node, rescue_armed=False)
        types = self.client.reset_options(server.number).types
        if known_off and "power" in types:
            self.client.reset(server.number, "power")
        else:
            self._reset(server, node)
        self._record(node, mode="disk")
        return True

    def power_off(self, node: Node) -> None:
        server = self._ready(node)
        options = self.client.reset_options(server.number)
        if "power_long" not in options.types:
            raise ProviderError(f"{node.name}: Robot server {server.number} cannot be powered "
                                f"off through the API (reset types: {', '.join(options.types)})"
                                "; shut it down from its own system instead")
        self.client.reset(server.number, "power_long")
        self._record(node, mode="off")

    def delete(self, node: Node) -> None:
        raise ProviderError("Robot servers are cancelled in the Robot console; clonefleet "
                            f"never cancels one (node {node.name}: cancel it in Robot → "
                            "Server → Cancellation if you mean to)")

    def list(self) -> list[ServerInfo]:
        return [self._info(server.name or str(server.number), server, None, "")
                for server in self.client.servers()]

    def network(self, node: Node) -> InitramfsNetwork:
        if node.network is not None:
            return static_network(node.network)
        server = self._server(node)
        gateway = self.client.ip(server.ip).gateway
        if not gateway:
            raise ProviderError(f"node {node.name}: Robot reports no gateway for "
                                f"{server.ip}; set network = {{address, prefix, gateway}} "
                                "in the node's table")
        # Hetzner routes each dedicated server's IPv4 as a /32 behind a gateway outside it.
        network = InitramfsNetwork(mode="static", address=server.ip, prefix=32,
                                   gateway=gateway, onlink_gateway=True)
        if server.ipv6_net:
            network = _with_ipv6(network, str(ipaddress.IPv6Address(
                server.ipv6_net.split("/")[0]) + 2), 64, "fe80::1")
        return network

    def wait_ready(self, access: SshAccess, node: Node, timeout: float, what: str, *,
                   host_keys: tuple[str, ...] | None = None) -> None:
        """Wait until an SSH banner answers at `access`; when `host_keys` (or the access's
        own) are given, the key presented must match one of them."""
        pinned = host_keys if host_keys is not None else access.host_keys

        def check() -> bool | None:
            if not pinned:
                return True if _banner(access, self.probe_patience) else None
            presented = _presented_key(access, self.probe_patience)
            if presented is None:
                return None
            if not _matches(presented, pinned):
                raise HostKeyMismatchError(
                    f"{node.name}: {what} at {access} presented host key "
                    f"{presented[0]} {key_fingerprints(presented[1])[0]}, which is none of the "
                    f"fingerprints Robot published for its rescue ({', '.join(pinned)}); "
                    "refusing to continue (possible man-in-the-middle): check the server in "
                    "Robot and run the command again")
            return True

        wait_until(check, what=f"{node.name}: wait for {what} at {access}", timeout=timeout,
                   policy=self.poll, exit_code=9)

    # -- steps -----------------------------------------------------------------------------

    def _reset_type(self) -> str:
        return self._setting("reset_type", "hw")

    def _reset(self, server: RobotServer, node: Node) -> None:
        self.client.reset(server.number, self._check_reset_type(server, node))

    def _check_reset_type(self, server: RobotServer, node: Node) -> str:
        reset_type = self._reset_type()
        options = self.client.reset_options(server.number)
        if reset_type not in options.types:
            raise ProviderError(f"{node.name}: reset type {reset_type!r} is not available for "
                                f"Robot server {server.number} (available: "
                                f"{', '.join(options.types) or 'none'}); set reset_type in "
                                f"[providers.{self.name}]")
        return reset_type

    def _last_boot_time(self, number: int) -> str | None:
        try:
            return self.client.last_rescue(number).boot_time
        except RobotApiError as error:
            if error.status == 404:
                return None
            raise

    def _wait_consumed(self, node: Node, server: RobotServer, previous: str | None) -> None:
        """Robot consumes a rescue activation when the machine boots into it: until then a
        banner on port 22 may be the old system going down."""
        seen: list[str] = []

        def check() -> bool | None:
            rescue = self.client.rescue(server.number)
            seen[:] = ["armed" if rescue.active else "consumed"]
            if rescue.active:
                return None
            last = self._last_boot_time(server.number)
            return True if last and last != previous else None

        try:
            wait_until(check, what=f"{node.name}: Robot server {server.number} to boot rescue",
                       timeout=self.boot_timeout, policy=self.poll,
                       describe=lambda: f"rescue {seen[-1] if seen else 'unknown'}")
        except ClonefleetError as error:
            raise self._disarm_after_failure(node, server, error) from None

    def _ensure_keys(self, public_lines: Sequence[str]) -> tuple[str, ...]:
        """Robot authorizes rescue keys by fingerprint of keys stored in the account."""
        if not public_lines:
            raise ProviderError("boot_rescue needs at least one SSH public key")
        stored = {key.fingerprint for key in self.client.ssh_keys()}
        fingerprints: tuple[str, ...] = ()
        for line in public_lines:
            fingerprint = md5_fingerprint(line)
            if fingerprint not in stored:
                name = f"clonefleet {fingerprint.replace(':', '')[:12]}"
                self.log(f"robot: storing SSH key {fingerprint} as {name!r} in the account")
                try:
                    self.client.add_key(name, line)
                except RobotApiError as error:
                    if error.code != "KEY_ALREADY_EXISTS":
                        raise
                stored.add(fingerprint)
            fingerprints += (fingerprint,)
        return fingerprints

    def _armed_error(self, node: Node, server: RobotServer, why: str) -> RescueArmed:
        return RescueArmed(
            f"{node.name}: {why}; Robot server {server.number} ({server.ip}) is left with "
            "rescue ARMED: its next reset or reboot boots the rescue system. Run `clonefleet "
            f"provision {node.name}` again, or disarm it in "
            f"{CONSOLE_HINT.format(number=server.number)} (API: DELETE "
            f"/boot/{server.number}/rescue)")

    def _disarm_after_failure(self, node: Node, server: RobotServer,
                              error: BaseException) -> ProviderError:
        try:
            self.client.deactivate_rescue(server.number)
        except ClonefleetError as cleanup:
            return self._armed_error(node, server, f"{error}; disarming failed too ({cleanup})")
        self._record(node, rescue_armed=False)
        return ProviderError(f"{error}; rescue on Robot server {server.number} was disarmed "
                             f"again, so nothing is left armed: run `clonefleet provision "
                             f"{node.name}` again")


# -- SSH probes and host keys ------------------------------------------------------------


def _banner(access: SshAccess, patience: float) -> bool:
    try:
        with socket.create_connection((access.host, access.port), timeout=5) as sock:
            sock.settimeout(patience)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _presented_key(access: SshAccess, patience: float) -> tuple[str, bytes] | None:
    """The host key the SSH server at `access` presents (name, blob); None if no answer."""
    try:
        sock = socket.create_connection((access.host, access.port), timeout=5)
    except OSError:
        return None
    transport = paramiko.Transport(sock)
    transport.banner_timeout = patience
    try:
        transport.start_client(timeout=patience)
        key = transport.get_remote_server_key()
        return key.get_name(), key.asbytes()
    except (paramiko.SSHException, OSError, EOFError):
        return None
    finally:
        transport.close()


def _matches(presented: tuple[str, bytes], pinned: tuple[str, ...]) -> bool:
    """Robot's fingerprints may be SHA256 ("SHA256:..." or bare base64) or MD5 hex."""
    sha, md5 = key_fingerprints(presented[1])
    md5_hex = md5.removeprefix("MD5:").replace(":", "")
    for entry in pinned:
        text = entry.strip().split()[-1] if entry.strip() else ""
        if text in (sha, sha.removeprefix("SHA256:")):
            return True
        if text.replace(":", "").lower().removeprefix("md5") == md5_hex:
            return True
    return False


def _with_host_keys(access: SshAccess, host_keys: tuple[str, ...]) -> SshAccess:
    return dataclasses.replace(access, host_keys=tuple(host_keys))


def _with_ipv6(network: InitramfsNetwork, address: str, prefix: int,
               gateway: str) -> InitramfsNetwork:
    return dataclasses.replace(network, ipv6_address=f"{address}/{prefix}", ipv6_gateway=gateway)


def create(config: ProviderConfig, state_dir: Path,
           log: Callable[[str], None] = print) -> HetznerRobotProvider:
    return HetznerRobotProvider(config, state_dir, log)
