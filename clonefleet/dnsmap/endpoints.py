"""How to reach each node's PowerDNS: its HTTP API (to push) and its DNS port (to verify).

The default comes from the state store: the node fact `dns_endpoint`, a JSON object

    {"api_url": "http://203.0.113.10:8081",  # PowerDNS webserver base URL, no /api suffix
     "api_key": "...",                      # the server's api-key
     "dns_host": "203.0.113.10",            # where its DNS server listens
     "dns_port": 53,                        # optional, default 53
     "server_id": "localhost"}              # optional, PowerDNS server id, default localhost

written by whatever deploys PowerDNS on the node (`store.set_fact(node, "dns_endpoint", {...})`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clonefleet.dnsmap.errors import EndpointError
from clonefleet.inventory import Fleet
from clonefleet.state import StateStore

ENDPOINT_FACT = "dns_endpoint"


@dataclass(frozen=True)
class Endpoint:
    node: str
    api_url: str
    api_key: str
    dns_host: str
    dns_port: int = 53
    server_id: str = "localhost"

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
    def from_fact(cls, node: str, fact: Mapping[str, Any]) -> Endpoint:
        if not isinstance(fact, Mapping):
            raise EndpointError(f"node {node!r}: fact {ENDPOINT_FACT!r} is not an object; "
                                "store a dict with api_url, api_key, dns_host")
        missing = [key for key in ("api_url", "api_key", "dns_host") if not fact.get(key)]
        if missing:
            raise EndpointError(f"node {node!r}: fact {ENDPOINT_FACT!r} lacks "
                                f"{', '.join(missing)}; store them with "
                                "store.set_fact(node, 'dns_endpoint', fact)")
        port = fact.get("dns_port", 53)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise EndpointError(f"node {node!r}: dns_endpoint.dns_port {port!r} is not a port; "
                                "use 1-65535")
        return cls(
            node=node,
            api_url=str(fact["api_url"]),
            api_key=str(fact["api_key"]),
            dns_host=str(fact["dns_host"]),
            dns_port=port,
            server_id=str(fact.get("server_id", "localhost")),
        )


class Endpoints(dict[str, Endpoint]):
    """Node name → how to reach its PowerDNS. Nodes without an entry are not pushed to.

    `from_store` takes every node's `dns_endpoint` fact, except retired nodes'.
    """

    @classmethod
    def from_store(cls, fleet: Fleet, store: StateStore) -> Endpoints:
        endpoints = cls()
        for node in sorted(fleet.nodes):
            record = store.get(node)
            # A retired node's server is gone for good; pushing to it would only ever fail.
            if record is not None and record.state == "retired":
                continue
            fact = store.get_fact(node, ENDPOINT_FACT)
            if fact is not None:
                endpoints[node] = Endpoint.from_fact(node, fact)
        return endpoints
