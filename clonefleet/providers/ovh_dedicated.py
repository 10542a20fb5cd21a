"""OVHcloud dedicated servers through the `ovh` library (python-ovh 1.2).

Invariant: clonefleet never leaves a server netbooting rescue without saying so. The rescue
netboot is set only inside `boot_rescue`, which sets the netboot back to the hard disk as
soon as the rescue system answers SSH (the netboot is read at boot time only, so the running
rescue system is not disturbed and the install's final reboot boots the disk). Any failure
in between first tries to set the disk netboot back, then ends in one `ProviderError`
naming the server, where its netboot is left and the exact recovery.

Servers are ordered and cancelled by people in the OVHcloud console: the driver adopts one
by its service name (node key `service_name`) and never creates or cancels one. OVH's API
has no power-off call for dedicated servers; a reboot is a hard reset ("hardReboot" task).

Facts the code relies on (see docs/providers/ovh.md and ../shared/PROVIDERS.md):
- python-ovh maps 400 → BadParametersError, 403 by `errorCode`, 404 →
  ResourceNotFoundError, 409 → ResourceConflictError and everything else (429, 5xx) → plain
  APIError with `.response`; a non-JSON answer (a load balancer's 502 page) is
  InvalidResponse; a network failure is HTTPError. It never retries: this module does,
  for 429, 5xx, bad gateways and connection errors only.
- `str(APIError)` appends "\\nOVH-Query-ID: ..." on a second line: messages are rebuilt
  from `args[0]` and the query id is kept on the same line.
- A task may answer 404 or 500 for a while right after its creation (terraform-provider-ovh
  retries both); its status ends in `done`, `cancelled`, `customerError` or `ovhError`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import ovh
import ovh.client
import ovh.config
import ovh.exceptions

from clonefleet.errors import ClonefleetError, ConfigError, ProviderError, one_line
from clonefleet.image.base import DROPBEAR_PORT
from clonefleet.inventory import Node
from clonefleet.providers.base import (
    InitramfsNetwork,
    ProviderConfig,
    ServerInfo,
    ServerStatus,
    SshAccess,
    static_network,
)
from clonefleet.retry import POLL, RetryPolicy, retry, wait_until

DEFAULT_ENDPOINT = "ovh-eu"
# The Linux rescue OVH's guides name today, then the legacy one.
RESCUE_KERNELS = ("rescue-customer", "rescue64-pro")
FAILED_TASK = ("cancelled", "customerError", "ovhError")
TRANSIENT_STATUS = (429, 500, 502, 503, 504)
# Common NICs of OVH dedicated ranges; the initramfs needs their drivers for Dropbear.
NIC_MODULES = ("igb", "ixgbe", "i40e", "ice", "e1000e", "tg3", "bnxt_en", "mlx5_core")
API_RETRY = RetryPolicy(first=1.0, cap=15.0, factor=2.0, jitter=0.2)


class OvhApiError(ProviderError):
    """One OVH API failure, as one line. `transient` for 429, 5xx and network errors."""

    def __init__(self, message: str, *, transient: bool = False, status: int = 0) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class OvhDedicatedProvider:
    """One `[providers.NAME]` table with `driver = "ovh"`."""

    boot_timeout = 900.0  # firmware and RAID controllers take minutes

    def __init__(self, config: ProviderConfig, state_dir: Path,
                 log: Callable[[str], None] = print, *,
                 api_timeout: float = 120.0, api_policy: RetryPolicy = API_RETRY,
                 task_timeout: float = 900.0, poll: RetryPolicy = POLL,
                 ssh_timeout: float = 900.0, probe_patience: float = 10.0,
                 client: Any = None) -> None:
        self.name = config.name
        self.config = config
        self.settings = dict(config.settings)
        self.state_dir = state_dir
        self.log = log
        self.api_timeout, self.api_policy = api_timeout, api_policy
        self.task_timeout, self.poll = task_timeout, poll
        self.ssh_timeout, self.probe_patience = ssh_timeout, probe_patience
        self._client = client
        self.endpoint = self._register_endpoint()

    # -- client and credentials ------------------------------------------------------------

    def _register_endpoint(self) -> str:
        """The python-ovh endpoint name: `endpoint`, or the table's name for `api_url`."""
        api_url = str(self.settings.get("api_url") or "").rstrip("/")
        if not api_url:
            endpoint = str(self.settings.get("endpoint") or DEFAULT_ENDPOINT)
            if endpoint not in ovh.client.ENDPOINTS:
                raise ConfigError(f"[providers.{self.name}]: endpoint {endpoint!r} is not an "
                                  f"OVH API endpoint; use one of "
                                  f"{', '.join(sorted(ovh.client.ENDPOINTS))} or set api_url")
            return endpoint
        known = ovh.client.ENDPOINTS.get(self.name)
        if known is not None and known != api_url and self.name in _BUILTIN_ENDPOINTS:
            raise ConfigError(f"[providers.{self.name}]: api_url would replace python-ovh's "
                              f"own endpoint {self.name!r}; give the provider table another "
                              "name")
        # python-ovh resolves endpoints through this module-level table only; adding a
        # name is its documented way to reach another API root (ovh.conf sections follow
        # the same name).
        ovh.client.ENDPOINTS[self.name] = api_url
        return self.name

    def create_token_url(self) -> str:
        root = str(ovh.client.ENDPOINTS[self.endpoint])
        return root[: -len("/1.0")] + "/createToken/" if root.endswith("/1.0") else root

    def _credentials_problem(self) -> str:
        """What python-ovh's own lookup (OVH_* variables, ovh.conf, config_file) lacks."""
        manager = ovh.config.ConfigurationManager()
        config_file = self.settings.get("config_file")
        if config_file:
            path = Path(str(config_file)).expanduser()
            if self.config.fleet_path is not None and not path.is_absolute():
                path = self.config.fleet_path.parent / path
            if not path.is_file():
                return (f"[providers.{self.name}] config_file {str(path)!r} does not exist; "
                        "fix the path or remove config_file to use OVH_* variables")
            manager.read(str(path))

        def present(key: str) -> bool:
            return bool(manager.get(self.endpoint, key))

        if present("client_id") and present("client_secret"):
            return ""  # OAuth2 service account: python-ovh handles it
        missing = [label for key, label in (("application_key", "application key"),
                                            ("application_secret", "application secret"),
                                            ("consumer_key", "consumer key"))
                   if not present(key)]
        if not missing:
            return ""
        variables = ", ".join(f"OVH_{key.upper()}" for key in
                              ("application_key", "application_secret", "consumer_key")
                              if not present(key))
        return (f"OVH provider {self.name!r}: no {', '.join(missing)} found for endpoint "
                f"{self.endpoint!r}; set {variables} (or add them under [{self.endpoint}] "
                f"in ovh.conf / config_file); create keys at {self.create_token_url()}")

    def client(self) -> Any:
        if self._client is None:
            problem = self._credentials_problem()
            if problem:
                raise ProviderError(problem)
            config_file = self.settings.get("config_file")
            path = None
            if config_file:
                resolved = Path(str(config_file)).expanduser()
                if self.config.fleet_path is not None and not resolved.is_absolute():
                    resolved = self.config.fleet_path.parent / resolved
                path = str(resolved)
            try:
                self._client = ovh.Client(endpoint=self.endpoint, config_file=path,
                                          timeout=(10, 60))
            except ovh.exceptions.APIError as error:
                raise ProviderError(f"OVH provider {self.name!r}: {_first_line(error)}; "
                                    f"fix the OVH_* variables or ovh.conf") from None
        return self._client

    # -- calls ---------------------------------------------------------------------------

    def _translate(self, error: Exception, method: str, path: str,
                   server: str) -> OvhApiError:
        """One line for the user, transient where waiting may help."""
        where = f"OVH {method} {path}" + (f" ({server})" if server else "")
        if isinstance(error, ovh.exceptions.HTTPError):
            return OvhApiError(f"{where}: cannot reach {ovh.client.ENDPOINTS[self.endpoint]}: "
                               f"{_first_line(error)}", transient=True)
        if isinstance(error, ovh.exceptions.InvalidResponse):
            # Only a proxy's error page (502/503/504) is not JSON.
            return OvhApiError(f"{where}: the API answered something that is not JSON "
                               "(a gateway error page)", transient=True)
        message = _first_line(error)
        query = getattr(error, "query_id", None)
        suffix = f" (OVH query id {query})" if query else ""
        response = getattr(error, "response", None)
        status = int(getattr(response, "status_code", 0) or 0)
        token = self.create_token_url()
        if isinstance(error, ovh.exceptions.BadParametersError) and \
                "signature" in message.lower():
            return OvhApiError(
                f"{where}: OVH rejected the request signature ({message}){suffix}; the "
                "application secret does not belong to the application key, or the clock "
                "is far off: check OVH_APPLICATION_SECRET against the keys shown at "
                f"{token}", status=status)
        if isinstance(error, ovh.exceptions.InvalidKey):
            return OvhApiError(
                f"{where}: {message}{suffix}; the application key is not valid on endpoint "
                f"{self.endpoint!r} (keys work only on the OVHcloud platform that issued "
                f"them): check OVH_APPLICATION_KEY / OVH_ENDPOINT or create keys at {token}",
                status=status)
        if isinstance(error, (ovh.exceptions.NotCredential,
                              ovh.exceptions.InvalidCredential)):
            return OvhApiError(
                f"{where}: {message}{suffix}; the consumer key is unknown, not validated or "
                f"expired: create a new one at {token} and set OVH_CONSUMER_KEY",
                status=status)
        if isinstance(error, ovh.exceptions.NotGrantedCall):
            return OvhApiError(
                f"{where}: {message}{suffix}; the consumer key's access rules do not allow "
                f"this call: create keys at {token} with GET, PUT and POST on "
                "/dedicated/server and /dedicated/server/*", status=status)
        if isinstance(error, ovh.exceptions.APIError) and status in TRANSIENT_STATUS:
            what = "rate limited" if status == 429 else f"server error {status}"
            return OvhApiError(f"{where}: {what}: {message}{suffix}", transient=True,
                               status=status)
        return OvhApiError(f"{where}: {message}{suffix}", status=status)

    def _raw(self, method: str, path: str, server: str, **data: Any) -> Any:
        client = self.client()
        try:
            if method == "GET":
                return client.get(path, **data)
            if method == "PUT":
                return client.put(path, **data)
            if method == "POST":
                return client.post(path, **data)
            raise AssertionError(method)
        except ovh.exceptions.APIError as error:
            raise self._translate(error, method, path, server) from None

    def _call(self, method: str, path: str, server: str = "", **data: Any) -> Any:
        """One API call, retried while it fails transiently (429, 5xx, network)."""
        return retry(lambda: self._raw(method, path, server, **data),
                     what=f"OVH {method} {path}", timeout=self.api_timeout,
                     policy=self.api_policy,
                     on_retry=lambda number, error, delay: self.log(
                         f"{server or self.name}: {error}; retrying in {delay:.0f} s"))

    # -- servers, boots, tasks ---------------------------------------------------------------

    def service_name(self, node: Node) -> str:
        settings: dict[str, Any] = node.provider_settings
        name = str(settings.get("service_name") or node.server_id or "")
        if not name:
            raise ConfigError(f"node {node.name}: an ovh node needs service_name (e.g. "
                              "\"ns1234567.ip-203-0-113.eu\", shown in the OVHcloud console) "
                              "in its fleet-file table")
        return name

    def _server(self, service: str, node: str = "") -> dict[str, Any]:
        try:
            result: dict[str, Any] = self._call("GET", f"/dedicated/server/{service}", service)
            return result
        except OvhApiError as error:
            if error.status != 404:
                raise
        known = self._call("GET", "/dedicated/server")
        listed = ", ".join(known) if known else "none"
        raise ProviderError(
            f"{'node ' + node + ': ' if node else ''}no dedicated server {service!r} in this "
            f"OVH account (endpoint {self.endpoint!r}; servers there: {listed}); order it in "
            "the OVHcloud console or fix service_name in the fleet file") from None

    def _boot_ids(self, service: str, boot_type: str) -> list[int]:
        result: list[int] = self._call("GET", f"/dedicated/server/{service}/boot", service,
                                       bootType=boot_type)
        return result

    def _boot(self, service: str, boot_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET",
                                            f"/dedicated/server/{service}/boot/{boot_id}",
                                            service)
        return result

    def rescue_boot_id(self, service: str) -> int:
        """The Linux rescue netboot of this server (ids differ per server)."""
        boots = [self._boot(service, boot_id) for boot_id in self._boot_ids(service, "rescue")]
        for kernel in RESCUE_KERNELS:
            for boot in boots:
                if boot.get("kernel") == kernel:
                    return int(boot["bootId"])
        linux = [boot for boot in boots if "win" not in str(boot.get("kernel", "")).lower()]
        if linux:
            return int(linux[0]["bootId"])
        raise ProviderError(f"OVH server {service} offers no Linux rescue netboot (found: "
                            f"{', '.join(str(boot.get('kernel')) for boot in boots) or 'none'}"
                            "); open a ticket with OVHcloud support")

    def disk_boot_id(self, service: str) -> int:
        boots = self._boot_ids(service, "harddisk")
        if not boots:
            raise ProviderError(f"OVH server {service} offers no hard-disk netboot; open a "
                                "ticket with OVHcloud support")
        return int(boots[0])

    def _reboot(self, service: str) -> int:
        task: dict[str, Any] = self._call("POST", f"/dedicated/server/{service}/reboot",
                                          service)
        return int(task["taskId"])

    def _wait_task(self, service: str, task_id: int, what: str) -> None:
        """Follow a task to `done`. Right after creation a task may answer 404 or 500 for a
        while: both count as "not yet", like 429 and network errors."""
        path = f"/dedicated/server/{service}/task/{task_id}"
        seen = {"last": "not read yet"}

        def check() -> dict[str, Any] | None:
            try:
                task: dict[str, Any] = self._raw("GET", path, service)
            except OvhApiError as error:
                seen["last"] = str(error)
                if error.status == 404:
                    error.transient = True
                raise
            status = str(task.get("status"))
            seen["last"] = f"task {task_id} {status}"
            if status == "done":
                return task
            if status in FAILED_TASK:
                comment = task.get("comment") or "no comment"
                raise ProviderError(f"OVH task {task_id} ({task.get('function')}) on {service} "
                                    f"ended {status}: {comment}")
            return None

        wait_until(check, what=f"{service}: {what} (OVH task {task_id})",
                   timeout=self.task_timeout, policy=self.poll,
                   describe=lambda: seen["last"])

    def _set_boot(self, service: str, boot_id: int, **extra: Any) -> None:
        self._call("PUT", f"/dedicated/server/{service}", service, bootId=boot_id, **extra)

    # -- the disk netboot, always restored ----------------------------------------------

    def prepare_disk_boot(self, node: Node) -> int:
        """Set the netboot to the hard disk (if it is not already) and check it took.

        `boot_rescue` calls it as soon as the rescue system answers, `boot_disk` before its
        reboot; the installer flow may call it before anything that reboots the node.
        Returns the disk boot id."""
        service = self.service_name(node)
        disk = self.disk_boot_id(service)
        if int(self._server(service, node.name).get("bootId", -1)) != disk:
            self._set_boot(service, disk)
            current = int(self._server(service, node.name).get("bootId", -1))
            if current != disk:
                raise ProviderError(f"OVH server {service}: netboot is still {current} after "
                                    f"setting the hard disk ({disk})")
            self.log(f"{node.name}: OVH netboot of {service} set back to the hard disk")
        return disk

    def _restore_after_failure(self, node: Node, service: str, error: ClonefleetError,
                               what: str) -> NoReturn:
        """End a failed rescue boot with one line: restore the disk netboot if the API lets
        us, and say exactly where the server was left and how to recover."""
        try:
            disk = self.prepare_disk_boot(node)
        except ClonefleetError as restore_error:
            raise ProviderError(
                f"{node.name}: {what} failed: {error}; OVH server {service} is LEFT NETBOOTING "
                f"RESCUE (setting the hard disk back failed too: {restore_error}); recover: in "
                f"the OVHcloud console set {service}'s Netboot to 'Boot from the hard disk' "
                f"(or PUT /dedicated/server/{service} {{\"bootId\": <harddisk boot id>}}), "
                f"then run `clonefleet provision {node.name}` again") from None
        raise ProviderError(
            f"{node.name}: {what} failed: {error}; the netboot of OVH server {service} is "
            f"back on the hard disk (boot id {disk}) and it may be running rescue until its "
            f"next reboot; run `clonefleet provision {node.name}` again") from None

    def _restore_quietly(self, node: Node, service: str) -> None:
        try:
            self.prepare_disk_boot(node)
        except BaseException as error:  # reported, then the original error goes on
            self.log(f"{node.name}: OVH server {service} is LEFT NETBOOTING RESCUE ({error}); "
                     f"set its Netboot to 'Boot from the hard disk' in the OVHcloud console, "
                     f"then run `clonefleet provision {node.name}` again")

    # -- protocol --------------------------------------------------------------------------

    def ensure_server(self, node: Node) -> ServerInfo:
        """Adopt the ordered server; OVH servers are never created here."""
        return self._info(node, self._server(self.service_name(node), node.name))

    def info(self, node: Node) -> ServerInfo:
        service = self.service_name(node)
        try:
            server: dict[str, Any] = self._call("GET", f"/dedicated/server/{service}", service)
        except OvhApiError as error:
            if error.status != 404:
                raise
            access = self.config.route(SshAccess(node.ipv4 or service, 22))
            return ServerInfo(node=node.name, server_id=service, status="missing",
                              ssh=access, unlock=access)
        return self._info(node, server)

    def _status(self, service: str, server: dict[str, Any]) -> ServerStatus:
        """Maps powerState, running reboot tasks and the netboot onto a ServerStatus. The
        netboot says what the server booted last under clonefleet (rescue or disk) only
        until `boot_rescue` restores the disk netboot while rescue still runs."""
        if server.get("powerState") == "poweroff":
            return "off"
        running = self._call("GET", f"/dedicated/server/{service}/task", service,
                             function="hardReboot", status="doing")
        if running:
            return "starting"
        boot_type = self._boot(service, int(server.get("bootId", 0))).get("bootType")
        return "rescue" if boot_type == "rescue" else "disk"

    def _info(self, node: Node, server: dict[str, Any]) -> ServerInfo:
        service = str(server["name"])
        ip = str(server.get("ip") or node.ipv4)
        return ServerInfo(
            node=node.name, server_id=service, status=self._status(service, server),
            ssh=self.config.route(SshAccess(ip, 22)),
            unlock=self.config.route(SshAccess(ip, DROPBEAR_PORT)),
            nic_modules=NIC_MODULES, forwarded_ports=self.config.forwards(ip),
            details={"ip": ip, "datacenter": str(server.get("datacenter", "")),
                     "state": str(server.get("state", "")),
                     "boot_id": str(server.get("bootId", ""))})

    def boot_rescue(self, node: Node, ssh_public_keys: list[str]) -> SshAccess:
        """Netboot rescue with the operator key, reboot, follow the task, wait for the
        rescue SSH, then set the netboot back to the hard disk."""
        service = self.service_name(node)
        server = self._server(service, node.name)
        if not ssh_public_keys:
            raise ProviderError(f"{node.name}: OVH rescue needs an SSH public key")
        if len(ssh_public_keys) > 1:
            self.log(f"{node.name}: OVH's rescueSshKey holds one key; using the first")
        rescue = self.rescue_boot_id(service)
        self.disk_boot_id(service)  # know the way back before leaving it
        access = self.config.route(SshAccess(str(server.get("ip") or node.ipv4), 22))
        self.log(f"{node.name}: OVH netboot of {service} → rescue (boot id {rescue})")
        try:
            # Inside the try: a PUT that gave up may still have been applied.
            self._set_boot(service, rescue, rescueSshKey=ssh_public_keys[0].strip())
            self._wait_task(service, self._reboot(service), "reboot into rescue")
            self.wait_ready(access, node, self.ssh_timeout, "rescue system ssh")
            self.prepare_disk_boot(node)
        except ClonefleetError as error:
            self._restore_after_failure(node, service, error, "boot into OVH rescue")
        except BaseException:
            # Ctrl-C or a bug: keep its traceback, but never leave the rescue netboot
            # behind without a word.
            self._restore_quietly(node, service)
            raise
        return access

    def boot_disk(self, node: Node) -> None:
        """Netboot the hard disk (checked), then reboot and follow the task."""
        service = self.service_name(node)
        try:
            self.prepare_disk_boot(node)
        except ClonefleetError as error:
            self._restore_after_failure(node, service, error, "set the hard-disk netboot")
        try:
            self._wait_task(service, self._reboot(service), "reboot from disk")
        except ClonefleetError as error:
            raise ProviderError(
                f"{node.name}: reboot of OVH server {service} from its disk failed: {error}; "
                "its netboot is on the hard disk: reboot it from the OVHcloud console or run "
                f"`clonefleet provision {node.name}` again") from None

    def reset(self, node: Node) -> None:
        service = self.service_name(node)
        self._wait_task(service, self._reboot(service), "hard reboot")

    def power_on(self, node: Node) -> bool:
        """OVH's API has no power-on call: a server whose `powerState` is `poweroff` is
        started by its documented equivalent, a reboot task with the netboot on the hard
        disk (`boot_disk`). A server that is on is left alone."""
        service = self.service_name(node)
        if self._server(service, node.name).get("powerState") != "poweroff":
            return False
        self.boot_disk(node)
        return True

    def power_off(self, node: Node) -> None:
        raise ProviderError(f"{node.name}: OVH's API cannot power a dedicated server off; "
                            "use the server's IPMI console in the OVHcloud console")

    def delete(self, node: Node | str) -> None:
        name = node if isinstance(node, str) else node.name
        raise ProviderError(f"{name}: OVH dedicated servers are not deleted by clonefleet; "
                            "cancel the server's subscription in the OVHcloud console")

    def list(self) -> list[ServerInfo]:
        servers: list[ServerInfo] = []
        for service in self._call("GET", "/dedicated/server"):
            server = self._call("GET", f"/dedicated/server/{service}", service)
            ip = str(server.get("ip") or "")
            servers.append(ServerInfo(
                node=service, server_id=service, status=self._status(service, server),
                ssh=self.config.route(SshAccess(ip, 22)),
                unlock=self.config.route(SshAccess(ip, DROPBEAR_PORT)),
                nic_modules=NIC_MODULES, details={"ip": ip},
                forwarded_ports=self.config.forwards(ip)))
        return servers

    def network(self, node: Node) -> InitramfsNetwork:
        """OVH dedicated servers: static IPv4; the gateway is the .254 of the IP's /24
        (OVH's convention), unless the fleet file gives the node's network."""
        if node.network is not None:
            return static_network(node.network)
        ip = node.ipv4
        if not ip:
            ip = str(self._server(self.service_name(node), node.name).get("ip") or "")
        octets = ip.split(".")
        if len(octets) != 4:
            raise ProviderError(f"{node.name}: OVH reports no IPv4 address for "
                                f"{self.service_name(node)}; set ipv4 or network for the "
                                "node in the fleet file")
        return InitramfsNetwork(mode="static", address=ip, prefix=24,
                                gateway=".".join([*octets[:3], "254"]))

    def wait_ready(self, access: SshAccess, node: Node, timeout: float, what: str) -> None:
        """Until an SSH banner answers at `access` (a connect alone proves nothing behind
        NAT or port forwards)."""
        patience = self.probe_patience

        def probe() -> bool | None:
            with socket.create_connection((access.host, access.port), timeout=5) as sock:
                sock.settimeout(patience)
                return True if sock.recv(64).startswith(b"SSH-") else None

        wait_until(probe, what=f"{node.name}: {what} at {access}", timeout=timeout,
                   policy=self.poll, exit_code=9)


_BUILTIN_ENDPOINTS = frozenset(ovh.client.ENDPOINTS)


def _first_line(error: BaseException) -> str:
    """python-ovh's `str()` adds the query id on a second line; keep the first argument."""
    text = str(error.args[0]) if error.args else str(error)
    return one_line(text) or type(error).__name__


def create(config: ProviderConfig, state_dir: Path,
           log: Callable[[str], None] = print) -> OvhDedicatedProvider:
    return OvhDedicatedProvider(config, state_dir, log)
