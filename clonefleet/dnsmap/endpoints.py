"""How to reach each node's PowerDNS: its HTTP API (to push) and its DNS port (to verify).

The default comes from the state store: the node fact `dns_endpoint`, a JSON object

    {"api_url": "http://203.0.113.10:8081",  # PowerDNS webserver base URL, no /api suffix
     "api_key_secret": "pdns_api_key",      # the node's secret holding the server's api-key
                                            # (`clonefleet.secrets`); or, older and for
                                            # tests, the key in clear: "api_key": "..."
     "dns_host": "203.0.113.10",            # where its DNS server listens (address or
                                            # host name, resolved once: first IPv4, else IPv6)
     "dns_port": 53,                        # optional, default 53
     "server_id": "localhost"}              # optional, PowerDNS server id, default localhost

written after a deploy that configured PowerDNS on the node (`clonefleet.services.dns`), or
by hand (`store.set_fact(node, "dns_endpoint", {...})`).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clonefleet.dnsmap.errors import EndpointError
from clonefleet.inventory import Fleet
from clonefleet.state import StateStore

if TYPE_CHECKING:
    from clonefleet.secrets import SecretStore

ENDPOINT_FACT = "dns_endpoint"


@functools.lru_cache(maxsize=256)
def resolve(host: str) -> str:
    """An address to send DNS queries to: `host` itself if it is one, else its first IPv4
    address (PowerDNS is often bound to IPv4 only, while `localhost` may list ::1 first), else
    its first IPv6 address. Raises `EndpointError` when the name does not resolve."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as error:
        raise EndpointError(f"dns_host {host!r} does not resolve ({error}); store an IP address "
                            "or a resolvable host name in the dns_endpoint fact") from None
    addresses = [str(item[4][0]) for item in found]
    ipv4 = [address for address in addresses if ":" not in address]
    return (ipv4 or addresses)[0]


@dataclass(frozen=True)
class Endpoint:
    node: str
    api_url: str
    api_key: str
    dns_host: str
    dns_port: int = 53
    server_id: str = "localhost"

    @property
    def dns_address(self) -> str:
        """Where to send DNS queries: `dns_host`, resolved if it is a host name."""
        return resolve(self.dns_host)

    @property
    def zones_url(self) -> str:
        return f"{self.api_url.rstrip('/')}/api/v1/servers/{self.server_id}/zones"

    def as_fact(self) -> dict[str, Any]:
        return {
            "api_url": self.api_url,
            "api_key": self.api_key,
            "dns_host": self.dns_host,
            "dns_port": self.dns_port,
            "server_id": self.server_id,
        }

    @classmethod
    def from_fact(cls, node: str, fact: Mapping[str, Any],
                  secrets: Callable[[], SecretStore] | None = None) -> Endpoint:
        """`secrets` gives the store a fact's `api_key_secret` is read from (opened only
        for a fact that names one)."""
        if not isinstance(fact, Mapping):
            raise EndpointError(f"node {node!r}: fact {ENDPOINT_FACT!r} is not an object; "
                                "store a dict with api_url, api_key_secret, dns_host")
        missing = [key for key in ("api_url", "dns_host") if not fact.get(key)]
        if not fact.get("api_key") and not fact.get("api_key_secret"):
            missing.append("api_key_secret")
        if missing:
            raise EndpointError(f"node {node!r}: fact {ENDPOINT_FACT!r} lacks "
                                f"{', '.join(missing)}; store them with "
                                "store.set_fact(node, 'dns_endpoint', fact)")
        port = fact.get("dns_port", 53)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise EndpointError(f"node {node!r}: dns_endpoint.dns_port {port!r} is not a port; "
                                "use 1-65535")
        api_url = str(fact["api_url"])
        if not api_url.startswith(("http://", "https://")):
            raise EndpointError(f"node {node!r}: dns_endpoint.api_url {api_url!r} is not an "
                                "http(s) URL; store e.g. 'http://203.0.113.10:8081'")
        try:
            resolve(str(fact["dns_host"]))  # a bad host name fails here, before any change
        except EndpointError as error:
            raise EndpointError(f"node {node!r}: dns_endpoint.{error}") from None
        if fact.get("api_key"):
            api_key = str(fact["api_key"])
        elif secrets is None:
            raise EndpointError(f"node {node!r}: fact {ENDPOINT_FACT!r} names the secret "
                                f"{fact['api_key_secret']!r} but no secret store was given")
        else:
            api_key = secrets().get(node, str(fact["api_key_secret"]))
        return cls(
            node=node,
            api_url=api_url,
            api_key=api_key,
            dns_host=str(fact["dns_host"]),
            dns_port=port,
            server_id=str(fact.get("server_id", "localhost")),
        )


class Endpoints(dict[str, Endpoint]):
    """Node name → how to reach its PowerDNS. Nodes without an entry are not pushed to.

    `from_store` takes every node's `dns_endpoint` fact, except retired nodes'.
    """

    @classmethod
    def from_store(cls, fleet: Fleet, store: StateStore,
                   secrets: SecretStore | None = None) -> Endpoints:
        """API keys named by the facts come from `secrets`, by default the fleet's own
        secret store (opened only when a fact names a secret)."""
        opened: list[SecretStore] = [secrets] if secrets is not None else []

        def secret_store() -> SecretStore:
            if not opened:
                from clonefleet.paths import fleet_state_dir
                from clonefleet.secrets import open_secrets

                opened.append(open_secrets(fleet_state_dir(fleet.name)))
            return opened[0]

        endpoints = cls()
        for node in sorted(fleet.nodes):
            record = store.get(node)
            # A retired node's server is gone for good; pushing to it would only ever fail.
            if record is not None and record.state == "retired":
                continue
            fact = store.get_fact(node, ENDPOINT_FACT)
            if fact is not None:
                endpoints[node] = Endpoint.from_fact(node, fact, secret_store)
        return endpoints
