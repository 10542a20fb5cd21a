"""The DNS map: node states → per-name sets of active nodes → PowerDNS on every node.

Public API for the other parts (rollout, smartwatch): `drain_node`, `undrain_node`,
`DrainResult`, `DrainRefused`, `Endpoints`/`Endpoint`, `record_health`, `settle`,
`wait_until_drained`; and for the CLI: `build_map`, `publish`, `verify`,
`build_geoip_database`. See docs/dns.md.
"""

from __future__ import annotations

from clonefleet.dnsmap.drain import (
    DrainPlan,
    DrainResult,
    drain_node,
    plan_drain,
    plan_undrain,
    record_health,
    undrain_node,
    wait_until_drained,
)
from clonefleet.dnsmap.endpoints import ENDPOINT_FACT, Endpoint, Endpoints
from clonefleet.dnsmap.errors import (
    DnsError,
    DnsMismatch,
    DnsUnreachable,
    DrainNotConfirmed,
    DrainRefused,
    EndpointError,
)
from clonefleet.dnsmap.geoip import build_geoip_database
from clonefleet.dnsmap.model import DnsMap, MapNode, RoutedEntry, build_map
from clonefleet.dnsmap.publish import PublishResult, publish, settle
from clonefleet.dnsmap.server import powerdns_settings
from clonefleet.dnsmap.verify import Disagreement, VerifyResult, verify

__all__ = [
    "ENDPOINT_FACT",
    "Disagreement",
    "DnsError",
    "DnsMap",
    "DnsMismatch",
    "DnsUnreachable",
    "DrainNotConfirmed",
    "DrainPlan",
    "DrainRefused",
    "DrainResult",
    "Endpoint",
    "EndpointError",
    "Endpoints",
    "MapNode",
    "PublishResult",
    "RoutedEntry",
    "VerifyResult",
    "build_geoip_database",
    "build_map",
    "drain_node",
    "plan_drain",
    "plan_undrain",
    "powerdns_settings",
    "publish",
    "record_health",
    "settle",
    "undrain_node",
    "verify",
    "wait_until_drained",
]
