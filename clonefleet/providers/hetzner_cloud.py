"""The `hetzner-cloud` driver: Hetzner Cloud servers through the `hcloud` library.

Invariants:
- A server that exists is never created again. A node's server is the one labelled
  `clonefleet/fleet=FLEET,clonefleet/node=NODE` (or the node's `server_id`); two servers with
  the same labels stop everything with an error naming both.
- Servers are deleted only by `delete()`, which only `clonefleet retire` calls.
- Every action (create, enable/disable rescue, reset, power) is waited for with
  `clonefleet.retry.wait_until`; requests that fail transiently (`locked`,
  `resource_unavailable`, `rate_limit_exceeded`, `conflict`, 5xx, connection errors) are
  retried with `clonefleet.retry.retry` up to a deadline (on top of the library's own
  retries for 429/502/504), then fail in one line naming the node, the server and what to do.
- No server is left in rescue silently: once rescue is enabled, any later failure says so
  and how to recover.

The API does not tell whether a running server booted the rescue system (rescue switches
itself off on that boot), so the driver remembers which boot it asked for, per node, under
`<fleet state>/hetzner-cloud/<provider>.json`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from clonefleet.errors import ClonefleetError, ConfigError, ProviderError, TimeoutError_
from clonefleet.image.base import DROPBEAR_PORT
from clonefleet.inventory import Node
from clonefleet.providers.base import (
    InitramfsNetwork,
    ProviderConfig,
    ServerInfo,
    ServerStatus,
    SshAccess,
)
from clonefleet.retry import POLL, GaveUp, RetryPolicy, TimedOut, is_transient, retry, wait_until
from clonefleet.ssh import public_key_md5

if TYPE_CHECKING:
    from hcloud import Client
    from hcloud.actions import BoundAction
    from hcloud.servers import BoundServer, EnableRescueResponse

T = TypeVar("T")

DRIVER = "hetzner-cloud"
DEFAULTS: dict[str, Any] = {
    "api_url": "https://api.hetzner.cloud/v1",
    "token_env": "HCLOUD_TOKEN",
    "server_type": "cx22",
    "image": "debian-12",
    "location": "fsn1",
    "ssh_key_name": "clonefleet-FLEETNAME",
}
FLEET_LABEL = "clonefleet/fleet"
NODE_LABEL = "clonefleet/node"
_SSH_KEY_UPLOAD = threading.Lock()  # see HetznerCloudProvider._key_id

# API error codes worth another try: the resource is busy (`locked`: an action is still
# running, e.g. right after create), out of stock for a moment, rate limited, or the API
# had a bad moment. The library retries only conflict/rate_limit/bad_gateway/timeout itself.
TRANSIENT_CODES = frozenset({"locked", "resource_unavailable", "rate_limit_exceeded",
                             "conflict", "timeout", "bad_gateway", "service_error",
                             "server_error", "unavailable", "maintenance"})

# What to do about each final error, in one clause.
ADVICE = {
    "unauthorized": "the token in ${token_env} was rejected: create a Read & Write API token "
                    "in the Hetzner Console (project → Security → API tokens) and export it",
    "token_readonly": "the token in ${token_env} is read-only: create a Read & Write token",
    "forbidden": "the token in ${token_env} may not do this: use a Read & Write token of the "
                 "project that owns the server",
    "locked": "another action is still running on the server: wait for it to finish "
              "(Hetzner Console → server → Activity) and run the command again",
    "resource_unavailable": "Hetzner has no capacity for this server type in this location "
                            "right now: set another `location` or `server_type` for the node "
                            "in the fleet file, or try again later",
    "rate_limit_exceeded": "the project's API rate limit (3600 requests/hour) is spent: wait "
                           "a few minutes and run the command again",
    "resource_limit_exceeded": "the project's server limit is reached: ask Hetzner to raise "
                               "it or delete unused servers",
    "invalid_input": "fix the value in the fleet file ([providers.NAME] or the node's table)",
    "uniqueness_error": "a resource with that name already exists in the project: rename or "
                        "delete it in the Hetzner Console",
    "protected": "the server is protected: remove its protection in the Hetzner Console first",
    "not_found": "it no longer exists in the project: check the Hetzner Console",
}
SERVER_ERROR_ADVICE = "the Hetzner Cloud API is failing: try again later (status.hetzner.com)"


REQUEST_POLICY = RetryPolicy(first=2.0, cap=15.0)
BANNER_POLICY = RetryPolicy(first=1.0, cap=3.0, factor=1.5)


@dataclass(frozen=True)
class Timing:
    """How long to keep trying; tests make all of it tiny."""

    request_policy: RetryPolicy = REQUEST_POLICY
    request_timeout: float = 120.0  # per request, across transient failures
    poll_policy: RetryPolicy = POLL
    action_timeout: float = 600.0
    banner_policy: RetryPolicy = BANNER_POLICY
    banner_patience: float = 10.0
    http_timeout: float = 30.0
    poll_interval: float = 1.0  # the library's own poll (unused: we poll with wait_until)


@dataclass
class _Boots:
    """Which boot the driver last asked for, per node (the API cannot tell rescue apart)."""

    path: Path
    data: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            self.data = {}

    def get(self, node: str, server_id: int) -> str:
        entry = self.data.get(node, {})
        return entry.get("boot", "") if entry.get("server_id") == str(server_id) else ""

    def set(self, node: str, server_id: int, boot: str) -> None:
        self.data[node] = {"server_id": str(server_id), "boot": boot}
        self._save()

    def forget(self, node: str) -> None:
        if self.data.pop(node, None) is not None:
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        temporary.replace(self.path)


class NotAnswering(ProviderError):
    """No SSH banner at the address yet (the server may still be booting)."""

    transient = True


class ActionFailed(ProviderError):
    """An action finished with status `error`."""


class ActionHung(ProviderError):
    """An action was still running when its deadline passed."""


def ssh_fingerprint(public_key: str) -> str | None:
    """Hetzner's fingerprint of an OpenSSH public key: MD5 of the key blob, colon-separated
    (what `GET /ssh_keys?fingerprint=` matches)."""
    return public_key_md5(public_key)


def _api_code(error: BaseException) -> str | int | None:
    from hcloud import APIException

    return error.code if isinstance(error, APIException) else None


def is_transient_api_error(error: BaseException) -> bool:
    """Worth another try: the codes above, HTTP 5xx without a JSON body, and connection
    errors (requests' exceptions are OSErrors)."""
    code = _api_code(error)
    if isinstance(code, str):
        return code in TRANSIENT_CODES
    if isinstance(code, int):
        return code >= 500
    return is_transient(error)


def _sid(server: BoundServer) -> int:
    if server.id is None:  # never for servers the API returned
        raise ProviderError(f"server {server.name} has no id")
    return int(server.id)


def _banner(host: str, port: int, patience: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=min(5.0, patience)) as sock:
            sock.settimeout(patience)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


class HetznerCloudProvider:
    boot_timeout = 600.0

    def __init__(self, config: ProviderConfig, state_dir: Path,
                 log: Callable[[str], None] = print, *, fleet_name: str | None = None,
                 operator_public_key: Callable[[], str | None] | None = None,
                 timing: Timing | None = None) -> None:
        self.config = config
        self.name = config.name
        self.settings: dict[str, Any] = {**DEFAULTS, **dict(config.settings)}
        self.state_dir = state_dir
        self.log = log
        self.fleet = fleet_name or state_dir.name
        self.ssh_key_name = str(self.settings["ssh_key_name"]).replace("FLEETNAME", self.fleet)
        self._operator_public_key = operator_public_key or (lambda: None)
        self.timing = timing or Timing()
        self._client: Client | None = None
        self.boots = _Boots(state_dir / "hetzner-cloud" / f"{config.name}.json")

    # -- plumbing ------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        if self._client is None:
            from hcloud import Client

            variable = str(self.settings["token_env"])
            token = os.environ.get(variable, "").strip()
            if not token:
                raise ConfigError(f"provider {self.name} ({DRIVER}): environment variable "
                                  f"{variable} is not set; export a Hetzner Cloud API token "
                                  f"(Read & Write) in {variable}")
            self._client = Client(token, api_endpoint=str(self.settings["api_url"]).rstrip("/"),
                                  application_name="clonefleet",
                                  poll_interval=self.timing.poll_interval,
                                  timeout=self.timing.http_timeout)
        return self._client

    def _advice(self, error: BaseException) -> str:
        code = _api_code(error)
        if isinstance(code, str) and code in ADVICE:
            return ADVICE[code].replace("${token_env}", str(self.settings["token_env"]))
        if (isinstance(code, int) and code >= 500) or code in TRANSIENT_CODES:
            return SERVER_ERROR_ADVICE
        if code is None and isinstance(error, OSError):
            return (f"cannot reach {self.settings['api_url']}: check the network and the "
                    f"provider's api_url")
        return "check the Hetzner Console and run the command again"

    def _failure(self, what: str, error: BaseException, extra: str = "") -> ProviderError:
        if isinstance(error, GaveUp):
            detail = (f"gave up after {error.seconds:.0f} s and {error.attempts} attempts; "
                      f"last error: {error.last}")
            advice = self._advice(error.last)
        else:
            detail = str(error)
            advice = self._advice(error)
        return ProviderError(f"{what}: {detail}; {advice}{extra}")

    def _call(self, what: str, attempt: Callable[[], T],
              transient: Callable[[BaseException], bool] = is_transient_api_error) -> T:
        """One API request, retried while it fails transiently; one-line error otherwise."""
        try:
            return retry(attempt, what=what, timeout=self.timing.request_timeout,
                         policy=self.timing.request_policy, transient=transient,
                         on_retry=lambda number, error, delay: self.log(
                             f"{what}: {error}; retrying in {delay:.0f} s"))
        except ClonefleetError as error:
            if isinstance(error, GaveUp):
                raise self._failure(what, error) from None
            raise
        except Exception as error:
            raise self._failure(what, error) from None

    def _wait(self, action: BoundAction, what: str) -> None:
        """Wait for an action to leave `running`; ActionFailed if it errored, ActionHung if it
        outlived its deadline."""
        last: dict[str, Any] = {"status": action.status, "progress": action.progress}

        def check() -> BoundAction | None:
            current = self.client.actions.get_by_id(action.id)
            last.update(status=current.status, progress=current.progress)
            return None if current.status == "running" else current

        try:
            done = wait_until(check, what=what, timeout=self.timing.action_timeout,
                              policy=self.timing.poll_policy,
                              transient=is_transient_api_error,
                              describe=lambda: (f"action {action.id} ({action.command}) "
                                                f"{last['status']} at {last['progress']}%"))
        except TimedOut as error:
            raise ActionHung(f"{error}; the action may still finish: check the server's "
                             "activity in the Hetzner Console") from None
        except ClonefleetError:
            raise
        except Exception as error:
            raise self._failure(what, error) from None
        if done.status == "error":
            problem: dict[str, Any] = dict(done.error or {})
            raise ActionFailed(f"{what}: action {done.id} ({done.command}) failed: "
                               f"{problem.get('message', 'no message')} "
                               f"({problem.get('code', 'error')}); check the server in the "
                               "Hetzner Console and run the command again")

    def _act(self, what: str, start: Callable[[], BoundAction], *, extra: str = "",
             if_hung: str = "", again: bool = False) -> None:
        """Start an action and wait for it. `again`: a failed action is tried again (as
        Terraform does for rescue and reset) until the request deadline. `extra` is added to
        any final error, `if_hung` (default `extra`) to a timed-out action's."""

        def attempt() -> None:
            self._wait(start(), what)

        def transient(error: BaseException) -> bool:
            return is_transient_api_error(error) or (again and isinstance(error, ActionFailed))

        try:
            self._call(what, attempt, transient)
        except ActionHung as error:
            raise ProviderError(f"{error}{if_hung or extra}") from None
        except ProviderError as error:
            if not extra:
                raise
            raise ProviderError(f"{error}{extra}") from None

    def _selector(self, node: str | None = None) -> str:
        selector = f"{FLEET_LABEL}={self.fleet}"
        return f"{selector},{NODE_LABEL}={node}" if node else selector

    def _node_settings(self, node: Node) -> dict[str, Any]:
        return dict(node.provider_settings)

    # -- finding servers ------------------------------------------------------------------

    def _labelled(self, node: Node) -> list[BoundServer]:
        return self._call(f"{node.name}: look up its Hetzner Cloud server",
                          lambda: self.client.servers.get_all(
                              label_selector=self._selector(node.name)))

    def _find(self, node: Node) -> BoundServer | None:
        if node.server_id:
            return self._by_id(node)
        servers = self._labelled(node)
        if len(servers) > 1:
            ids = ", ".join(str(server.id) for server in servers)
            raise ProviderError(f"{node.name}: {len(servers)} Hetzner Cloud servers carry the "
                                f"label {NODE_LABEL}={node.name} in fleet {self.fleet} "
                                f"(ids {ids}); delete the extra one in the Hetzner Console or "
                                f"set server_id for the node in the fleet file")
        return servers[0] if servers else None

    def _by_id(self, node: Node) -> BoundServer | None:
        from hcloud import APIException

        if not node.server_id.isdigit():
            raise ProviderError(f"{node.name}: server_id {node.server_id!r} is not a Hetzner "
                                "Cloud server id (a number); fix it in the fleet file")

        def get() -> BoundServer | None:
            try:
                return self.client.servers.get_by_id(int(node.server_id))
            except APIException as error:
                if error.code == "not_found":
                    return None
                raise

        server = self._call(f"{node.name}: look up server {node.server_id}", get)
        if server is None:
            raise ProviderError(f"{node.name}: server {node.server_id} (server_id in the fleet "
                                "file) does not exist in the project; fix server_id or remove "
                                "it to let clonefleet create a server")
        return server

    def _require(self, node: Node) -> BoundServer:
        server = self._find(node)
        if server is None:
            raise ProviderError(f"{node.name}: no Hetzner Cloud server labelled "
                                f"{NODE_LABEL}={node.name} in fleet {self.fleet}; run "
                                f"`clonefleet provision {node.name}` to create it")
        return server

    def _reload(self, node: Node, server: BoundServer) -> BoundServer:
        return self._call(f"{node.name}: read server {server.id}",
                          lambda: self.client.servers.get_by_id(_sid(server)))

    # -- SSH keys -------------------------------------------------------------------------

    def _key_ids(self, public_keys: Sequence[str], node: Node) -> list[int]:
        """Hetzner ids of `public_keys`: an existing key with the same fingerprint is
        adopted whatever its name; a new one is uploaded as `ssh_key_name` (-2, -3, ...)."""
        ids = []
        for index, line in enumerate(public_keys):
            fingerprint = ssh_fingerprint(line)
            if fingerprint is None:
                raise ProviderError(f"{node.name}: {line[:40]!r} is not an OpenSSH public key")
            name = self.ssh_key_name if index == 0 else f"{self.ssh_key_name}-{index + 1}"
            ids.append(self._key_id(node, name, line, fingerprint))
        return ids

    def _key_id(self, node: Node, name: str, line: str, fingerprint: str) -> int:
        # Nodes provisioned at once each have their own driver instance: unserialized, all
        # would find no key and all but the first upload would clash on the name.
        with _SSH_KEY_UPLOAD:
            return self._find_or_upload_key(node, name, line, fingerprint)

    def _find_or_upload_key(self, node: Node, name: str, line: str, fingerprint: str) -> int:
        what = f"{node.name}: upload SSH key {name}"
        existing = self._call(what, lambda: self.client.ssh_keys.get_by_fingerprint(fingerprint))
        if existing is not None:
            return int(existing.id or 0)
        named = self._call(what, lambda: self.client.ssh_keys.get_by_name(name))
        if named is not None:
            raise ProviderError(f"{what}: the project already has an SSH key named {name} "
                                f"with another key (fingerprint {named.fingerprint}); delete "
                                "it in the Hetzner Console (Security → SSH keys) or set "
                                "ssh_key_name in the provider's table")
        created = self._call(what, lambda: self.client.ssh_keys.create(
            name=name, public_key=line.strip(), labels={FLEET_LABEL: self.fleet}))
        self.log(f"{node.name}: uploaded SSH key {name} ({fingerprint})")
        return int(created.id or 0)

    # -- protocol -------------------------------------------------------------------------

    def ensure_server(self, node: Node) -> ServerInfo:
        """The node's server: adopted if it exists (by server_id or labels), else created
        and waited for until it runs."""
        server = self._find(node)
        if server is not None:
            self.log(f"{node.name}: adopted Hetzner Cloud server {server.id} ({server.name})")
            return self._settle(node, server)
        return self._create(node)

    def _create(self, node: Node) -> ServerInfo:
        from hcloud.images import Image
        from hcloud.locations import Location
        from hcloud.server_types import ServerType
        from hcloud.ssh_keys import SSHKey

        own = self._node_settings(node)
        server_type = str(own.get("server_type") or node.server_type
                          or self.settings["server_type"])
        image = str(own.get("image") or self.settings["image"])
        location = str(own.get("location") or self.settings["location"])
        what = f"{node.name}: create Hetzner Cloud server ({server_type}, {image}, {location})"
        clash = self._call(what, lambda: self.client.servers.get_by_name(node.name))
        if clash is not None:
            raise ProviderError(f"{node.name}: a server named {node.name} (id {clash.id}) "
                                f"exists without the labels {self._selector(node.name)}; add "
                                "those labels in the Hetzner Console to adopt it, or rename it")
        operator = self._operator_public_key()
        keys = [SSHKey(id=key_id) for key_id in self._key_ids([operator], node)] \
            if operator else []
        labels = {FLEET_LABEL: self.fleet, NODE_LABEL: node.name}
        actions: list[BoundAction] = []

        def find_or_create() -> BoundServer:
            # A create whose answer was lost may have worked: look before trying again.
            existing = self.client.servers.get_all(label_selector=self._selector(node.name))
            if existing:
                return existing[0]
            response = self.client.servers.create(
                name=node.name, server_type=ServerType(name=server_type),
                image=Image(name=image), location=Location(name=location), ssh_keys=keys,
                labels=labels, start_after_create=True)
            actions[:] = [response.action, *response.next_actions]
            return response.server

        server = self._call(what, find_or_create)
        self.log(f"{node.name}: created Hetzner Cloud server {server.id}")
        for action in actions:
            what = f"{node.name}: server {server.id}: {action.command}"
            try:
                self._wait(action, what)
            except ActionFailed as error:
                raise ProviderError(f"{error}; the server exists and will be adopted on the "
                                    "next run (or delete it in the Hetzner Console)") from None
        return self._settle(node, server)

    def _settle(self, node: Node, server: BoundServer) -> ServerInfo:
        """Wait while the server is being created or started, then describe it."""
        busy = ("initializing", "starting", "migrating", "rebuilding")
        last = {"status": server.status}

        def check() -> BoundServer | None:
            current = self.client.servers.get_by_id(_sid(server))
            last["status"] = current.status
            return None if current.status in busy else current

        if server.status in busy:
            try:
                server = wait_until(check, what=f"{node.name}: server {server.id} to settle",
                                    timeout=self.timing.action_timeout,
                                    policy=self.timing.poll_policy,
                                    transient=is_transient_api_error,
                                    describe=lambda: f"status {last['status']}")
            except TimedOut as error:
                raise ProviderError(f"{error}; check the server in the Hetzner Console") \
                    from None
            except ClonefleetError:
                raise
            except Exception as error:
                raise self._failure(f"{node.name}: read server {server.id}", error) from None
        return self._info(node.name, server)

    def info(self, node: Node) -> ServerInfo:
        server = self._find(node)
        if server is None:
            empty = SshAccess(node.ipv4, 22)
            return ServerInfo(node=node.name, server_id="", status="missing", ssh=empty,
                              unlock=SshAccess(node.ipv4, DROPBEAR_PORT))
        return self._info(node.name, server)

    def _status(self, node: str, server: BoundServer) -> ServerStatus:
        api = server.status
        if api == "running":
            if server.locked:
                return "starting"  # a reset or power action is in flight
            return "rescue" if self.boots.get(node, _sid(server)) == "rescue" else "disk"
        if api == "off":
            return "off"
        if api == "deleting":
            return "missing"
        # initializing, starting, stopping, migrating, rebuilding, unknown: in flight
        return "starting"

    def _info(self, node: str, server: BoundServer) -> ServerInfo:
        public = server.public_net
        ipv4 = public.ipv4.ip if public is not None and public.ipv4 is not None else ""
        ipv6 = public.ipv6.ip if public is not None and public.ipv6 is not None else ""
        details = {"api_status": str(server.status), "name": str(server.name),
                   "rescue_enabled": str(bool(server.rescue_enabled)).lower(),
                   "ipv6": str(ipv6)}
        if server.server_type is not None:
            details["server_type"] = str(server.server_type.name)
        if server.location is not None:
            details["location"] = str(server.location.name)
        return ServerInfo(node=node, server_id=str(server.id),
                          status=self._status(node, server),
                          ssh=self.config.route(SshAccess(ipv4, 22)),
                          unlock=self.config.route(SshAccess(ipv4, DROPBEAR_PORT)),
                          # Hetzner Cloud servers are KVM guests with virtio NICs.
                          nic_modules=("virtio_net",), details=details,
                          forwarded_ports=self.config.forwards(ipv4))

    def boot_rescue(self, node: Node, ssh_public_keys: list[str]) -> SshAccess:
        """Enable rescue with `ssh_public_keys` and reset (or power on) into it; waits for
        every action. Terraform's order: disable a stale rescue first, then enable, then
        reset."""
        server = self._require(node)
        label = f"{node.name}: server {server.id}"
        key_ids = self._key_ids(ssh_public_keys, node)
        if server.rescue_enabled:
            self._act(f"{label}: disable the rescue system left enabled",
                      lambda: self.client.servers.disable_rescue(server))
        enabled = (f"; rescue is ENABLED on server {server.id}: its next boot starts the "
                   f"rescue system (Hetzner turns it off after 60 minutes unused); run "
                   f"`clonefleet provision {node.name}` again, or disable it in the Hetzner "
                   f"Console (server → Rescue) and reset the server")
        maybe = enabled.replace("rescue is ENABLED", "rescue may be ENABLED")
        self._act(f"{label}: enable the rescue system",
                  lambda: self._enable(server, key_ids).action, if_hung=maybe, again=True)
        current = self._reload(node, server)
        if current.status == "off":
            self._act(f"{label}: power on into the rescue system",
                      lambda: self.client.servers.power_on(server), extra=enabled, again=True)
        else:
            self._act(f"{label}: reset into the rescue system",
                      lambda: self.client.servers.reset(server), extra=enabled, again=True)
        self.boots.set(node.name, _sid(server), "rescue")
        return self._info(node.name, self._reload(node, server)).ssh

    def _enable(self, server: BoundServer, key_ids: list[int]) -> EnableRescueResponse:
        # The API takes integer key ids; hcloud's annotation says str but passes them on.
        return self.client.servers.enable_rescue(server, type="linux64",
                                                 ssh_keys=cast(list[str], key_ids))

    def boot_disk(self, node: Node) -> None:
        """Boot the installed disk: disable rescue if it is still on, then reset (or power on
        a server that is off)."""
        server = self._require(node)
        label = f"{node.name}: server {server.id}"
        if server.rescue_enabled:
            self._act(f"{label}: disable the rescue system",
                      lambda: self.client.servers.disable_rescue(server))
        if server.status == "off":
            self._act(f"{label}: power on from disk",
                      lambda: self.client.servers.power_on(server), again=True)
        else:
            self._act(f"{label}: reset to boot from disk",
                      lambda: self.client.servers.reset(server), again=True)
        self.boots.set(node.name, _sid(server), "disk")

    def reset(self, node: Node) -> None:
        server = self._require(node)
        self._act(f"{node.name}: server {server.id}: reset",
                  lambda: self.client.servers.reset(server))
        self.boots.set(node.name, _sid(server), "rescue" if server.rescue_enabled else "disk")

    def power_on(self, node: Node) -> bool:
        """The `poweron` action for a server that is off, after disabling a rescue left
        enabled (power-on boots rescue while it is enabled); a running server is left alone."""
        server = self._require(node)
        if server.status == "running":
            return False
        label = f"{node.name}: server {server.id}"
        if server.rescue_enabled:
            self._act(f"{label}: disable the rescue system",
                      lambda: self.client.servers.disable_rescue(server))
        self._act(f"{label}: power on from disk",
                  lambda: self.client.servers.power_on(server), again=True)
        self.boots.set(node.name, _sid(server), "disk")
        return True

    def power_off(self, node: Node) -> None:
        server = self._require(node)
        if server.status == "off":
            return
        self._act(f"{node.name}: server {server.id}: power off",
                  lambda: self.client.servers.power_off(server))

    def delete(self, node: Node) -> None:
        """Delete the node's server for good (only `clonefleet retire` calls this)."""
        server = self._find(node)
        if server is None:
            self.log(f"{node.name}: no Hetzner Cloud server to delete")
            self.boots.forget(node.name)
            return
        self._act(f"{node.name}: delete server {server.id}",
                  lambda: self.client.servers.delete(server))
        self.boots.forget(node.name)
        self.log(f"{node.name}: deleted Hetzner Cloud server {server.id}")

    def list(self) -> list[ServerInfo]:
        servers = self._call(f"list servers of fleet {self.fleet}",
                             lambda: self.client.servers.get_all(
                                 label_selector=self._selector()))
        return [self._info((server.labels or {}).get(NODE_LABEL, str(server.name)), server)
                for server in servers]

    def network(self, node: Node) -> InitramfsNetwork:
        return InitramfsNetwork(mode="dhcp")

    def wait_ready(self, access: SshAccess, node: Node, timeout: float, what: str) -> None:
        patience = self.timing.banner_patience

        def probe() -> None:
            if not _banner(access.host, access.port, patience):
                raise NotAnswering(f"no SSH banner at {access.host}:{access.port}")

        retry(probe, what=f"{node.name}: wait for {what} at {access.host}:{access.port}",
              timeout=timeout, policy=self.timing.banner_policy,
              exit_code=TimeoutError_.exit_code)


def _operator_key_reader(config: ProviderConfig, state_dir: Path) -> Callable[[], str | None]:
    """The operator key provision uses (fleet.ssh_key or the one under the state folder)."""

    def read() -> str | None:
        if config.fleet_path is None:
            return None
        from clonefleet.inventory import load_fleet
        from clonefleet.ssh import ensure_operator_key

        fleet = load_fleet(config.fleet_path)
        return ensure_operator_key(fleet.ssh_key, state_dir).public_line

    return read


def _fleet_name(config: ProviderConfig, state_dir: Path) -> str:
    if config.fleet_name:
        return config.fleet_name
    if config.fleet_path is not None:
        from clonefleet.inventory import load_fleet

        return load_fleet(config.fleet_path).name
    return state_dir.name  # the state folder is named after the fleet


def create(config: ProviderConfig, state_dir: Path,
           log: Callable[[str], None] = print) -> HetznerCloudProvider:
    return HetznerCloudProvider(config, state_dir, log, fleet_name=_fleet_name(config, state_dir),
                                operator_public_key=_operator_key_reader(config, state_dir))
