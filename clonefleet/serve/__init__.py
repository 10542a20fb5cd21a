"""`clonefleet serve`: the small authenticated endpoint through which nodes ask to be drained.

The smartwatch agent on a node POSTs to `/v1/drain` with its per-node token when a disk turns
critical; the control plane applies the drain through the DNS map's safety rules
(`clonefleet.dnsmap.drain_node`). See `clonefleet.serve.server` for the protocol. The same
server answers `GET /metrics` for Prometheus (`clonefleet.serve.metrics`, docs/metrics.md).
"""

from __future__ import annotations

from clonefleet.serve.metrics import FleetCollector, metrics_registry, read_metrics_token
from clonefleet.serve.server import DrainService, make_server
from clonefleet.serve.tokens import (
    TOKEN_FACT,
    issue_token,
    revoke_token,
    token_owner,
    verify_token,
)

__all__ = ["TOKEN_FACT", "DrainService", "FleetCollector", "issue_token", "make_server",
           "metrics_registry", "read_metrics_token", "revoke_token", "token_owner", "verify_token"]
