"""DNS-01 challenge records on every node's PowerDNS: publish, wait until each answers, remove.

Any node's server may be the one the ACME server asks (every node is a name server of the
zone), so a record counts as published only when every node's server answers it. Records go
through the same API client as the DNS map (`patch_rrsets`: only the named rrsets change),
and the map's publish leaves `_acme-challenge` TXT rrsets alone (`dnsmap.zone.foreign`), so a
drain during issuance neither removes them nor is undone by them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from clonefleet.certs.errors import ChallengeNotPublished, ChallengeNotVisible
from clonefleet.dnsmap.endpoints import Endpoint, Endpoints
from clonefleet.dnsmap.errors import DnsError
from clonefleet.dnsmap.powerdns import ask, patch_rrsets
from clonefleet.dnsmap.publish import MAX_PARALLEL, SERVER_SECONDS
from clonefleet.inventory import Fleet
from clonefleet.state import StateStore

# Short, so a resolver that saw an old value asks again soon; the ACME server asks the
# nodes' servers directly anyway.
CHALLENGE_TTL = 60
POLL_SECONDS = 0.5

T = TypeVar("T")
Records = Mapping[str, tuple[str, ...]]  # fully qualified TXT name → validation strings


def challenge_endpoints(fleet: Fleet, store: StateStore) -> Endpoints:
    """Every node's DNS endpoint; a node without one is an error naming it, because the ACME
    server may ask any node's server (all are name servers of the zone). Retired nodes are
    skipped, as by the map's publish."""
    endpoints = Endpoints.from_store(fleet, store)
    missing = []
    for name in sorted(fleet.nodes):
        record = store.get(name)
        if name not in endpoints and not (record is not None and record.state == "retired"):
            missing.append(name)
    if missing:
        raise ChallengeNotPublished(
            f"node {', '.join(missing)} has no DNS endpoint, so the ACME server could ask a "
            "DNS server without the challenge; deploy its DNS server first (clonefleet "
            "deploy), or retire the node")
    if not endpoints:
        raise ChallengeNotPublished("the fleet has no node with a DNS endpoint; deploy the "
                                    "nodes' DNS servers first")
    return endpoints


def _each(endpoints: Endpoints, work: Callable[[Endpoint], T]) -> dict[str, T | DnsError]:
    """Run `work` on every endpoint at once; node → its result or its `DnsError`."""

    def run(endpoint: Endpoint) -> T | DnsError:
        try:
            return work(endpoint)
        except DnsError as error:
            return error

    targets = [endpoints[name] for name in sorted(endpoints)]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(targets))) as pool:
        outcomes = list(pool.map(run, targets))
    return {endpoint.node: outcome for endpoint, outcome in zip(targets, outcomes, strict=True)}


def _txt(value: str) -> str:
    return f'"{value}"'


def publish_records(endpoints: Endpoints, zone: str, records: Records,
                    timeout: float = SERVER_SECONDS) -> None:
    """Put the TXT records on every server (each rrset replaced as a whole). Raises
    `ChallengeNotPublished` naming every server that failed; the caller removes the records
    from all servers either way."""
    changes: list[dict[str, Any]] = [
        {"name": name, "type": "TXT", "ttl": CHALLENGE_TTL, "changetype": "REPLACE",
         "records": [{"content": _txt(value), "disabled": False} for value in sorted(values)]}
        for name, values in sorted(records.items())]
    outcomes = _each(endpoints, lambda endpoint: patch_rrsets(endpoint, zone, changes, timeout))
    failed = {node: outcome for node, outcome in outcomes.items()
              if isinstance(outcome, DnsError)}
    if failed:
        detail = "; ".join(f"{node}: {error}" for node, error in sorted(failed.items()))
        raise ChallengeNotPublished(
            f"could not publish the challenge records on {', '.join(sorted(failed))} "
            f"({detail}); check that its DNS server is up and holds zone {zone} (clonefleet "
            "dns publish)")


def remove_records(endpoints: Endpoints, zone: str, names: Iterable[str],
                   timeout: float = SERVER_SECONDS) -> dict[str, str]:
    """Delete the TXT rrsets from every server; node → error for those that failed."""
    changes: list[dict[str, Any]] = [{"name": name, "type": "TXT", "changetype": "DELETE"}
                                     for name in sorted(set(names))]
    if not changes:
        return {}
    outcomes = _each(endpoints, lambda endpoint: patch_rrsets(endpoint, zone, changes, timeout))
    return {node: str(outcome) for node, outcome in outcomes.items()
            if isinstance(outcome, DnsError)}


def answers(endpoint: Endpoint, name: str, timeout: float) -> frozenset[str]:
    """The TXT strings the server answers for `name` (quotes removed)."""
    answer = ask(endpoint, name, "TXT", timeout=timeout)
    return frozenset(text.strip('"') for text in answer.records)


def wait_visible(endpoints: Endpoints, records: Records, seconds: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 query_timeout: float = SERVER_SECONDS) -> None:
    """Wait until every server answers every record over DNS. Raises `ChallengeNotVisible`
    naming the first server (by name) still missing one after `seconds`."""
    deadline = clock() + seconds
    pending = {node: dict(records) for node in endpoints}
    last_error: dict[str, str] = {}
    while True:
        for node in sorted(pending):
            for name, values in sorted(pending[node].items()):
                try:
                    seen = answers(endpoints[node], name, min(query_timeout,
                                                              max(0.1, deadline - clock())))
                except DnsError as error:
                    last_error[node] = str(error)
                    continue
                if set(values) <= seen:
                    del pending[node][name]
            if not pending[node]:
                del pending[node]
        if not pending:
            return
        if clock() >= deadline:
            node = sorted(pending)[0]
            name = sorted(pending[node])[0]
            why = f" (last: {last_error[node]})" if node in last_error else ""
            raise ChallengeNotVisible(
                f"node {node}'s DNS server did not answer TXT {name} with the challenge "
                f"after {seconds:g} s{why}; check that server (clonefleet dns verify) or "
                "raise [services.certs] dns_wait_seconds")
        sleep(min(POLL_SECONDS, max(0.0, deadline - clock())))
