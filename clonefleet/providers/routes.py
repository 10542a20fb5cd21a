"""Where a lab VM behind a local API fake really answers.

A fake API reports public addresses (203.0.113.10:22) as the real one would; the lab VM
behind it answers on a forwarded loopback port. `LabMachines` records each VM's forwards in
`<fleet state>/lab/routes.json` ({"IP:PORT": "127.0.0.1:PORT"}); a provider table with
`lab_routes = true` maps every `SshAccess` its driver returns through that file, re-read on
each call because VMs come and go while a driver runs. The VM's other forwards (DNS, the
PowerDNS API, HTTP(S)) are there too, keyed "IP:PROTO/PORT" ("203.0.113.10:udp/53"): the
driver reports them as the server's `forwarded_ports`, as the lab driver does for its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from clonefleet.errors import ConfigError, ProviderError
from clonefleet.providers.base import SshAccess


def routes_path(state_dir: Path) -> Path:
    return state_dir / "lab" / "routes.json"


def read_routes(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON ({error}); delete it and power the lab "
                          "servers on again") from None
    if not isinstance(data, dict) or not all(isinstance(key, str) and isinstance(value, str)
                                             for key, value in data.items()):
        raise ConfigError(f"{path} must map 'IP:PORT' to '127.0.0.1:PORT'; delete it and power "
                          "the lab servers on again")
    return data


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class LabRoutes:
    """`ProviderConfig.route` for `lab_routes = true`: API address → where the VM answers.

    `path` is the routes file, or a function giving it (the loader does not know the state
    folder yet). An address without an entry is refused: a lab fleet never sends traffic
    to the public addresses its fake API reports.
    """

    path: Path | Callable[[], Path]

    def file(self) -> Path:
        return self.path if isinstance(self.path, Path) else self.path()

    def __call__(self, access: SshAccess) -> SshAccess:
        target = read_routes(self.file()).get(f"{access.host}:{access.port}")
        if target is None:
            raise ProviderError(
                f"no lab VM answers for {access.host}:{access.port} (lab_routes = true); "
                "start the provider's lab API (`clonefleet lab api NAME`) so its servers "
                "have VMs, or set lab_routes = false for a real provider")
        host, port = _split(target)
        return replace(access, host=host, port=port)

    def forwards(self, host: str) -> dict[str, tuple[str, int]]:
        """The VM's other forwarded ports behind public address `host`, by "PROTO/PORT"."""
        prefix = f"{host}:"
        return {key[len(prefix):]: _split(target)
                for key, target in read_routes(self.file()).items()
                if key.startswith(prefix) and "/" in key[len(prefix):]}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)


def update_routes(path: Path, add: Mapping[str, str] | None = None,
                  remove: tuple[str, ...] = ()) -> None:
    """Add and remove entries atomically (fakes in several processes share one file)."""
    with _locked(path):
        routes = read_routes(path)
        for key in remove:
            routes.pop(key, None)
        routes.update(add or {})
        temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(routes, indent=2, sort_keys=True) + "\n")
        temporary.replace(path)
