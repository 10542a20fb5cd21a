"""The control plane's Prometheus metrics, read from the state store when they are scraped.

Nothing is counted in memory: every value comes from the state store at scrape time, so several
`clonefleet serve` processes, and CLI runs that changed the store between two scrapes, report
the same numbers. Labels hold only names from the fleet file and fixed vocabularies (lifecycle
states, step names, drain sources, verify results); free text such as a drain reason never
becomes a label, so the number of series is bounded by the size of the fleet. Names, meanings
and example alert rules: docs/metrics.md.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from clonefleet.dnsmap.model import UNKNOWN_STATE
from clonefleet.dnsmap.verify import VERIFY_FACT
from clonefleet.errors import ConfigError
from clonefleet.inventory import Fleet
from clonefleet.state import FLEET_FACTS, LIFECYCLE, StateStore

DRAIN_SOURCES = ("smartwatch", "operator", "automation")
VERIFY_RESULTS = ("agrees", "disagrees", "unreachable", "unconfigured")


def drain_source(actor: str) -> str:
    """Which kind of caller drained a node, from the actor recorded with the transition."""
    if actor.startswith("smartwatch@"):
        return "smartwatch"
    # The CLI records the operator's login as "NAME (cli)" unless CLONEFLEET_ACTOR names the
    # automation running it (clonefleet.cli.dns._actor).
    if actor == "cli" or actor.endswith(" (cli)"):
        return "operator"
    return "automation"


class FleetCollector(Collector):
    """Given the fleet and its state store, yield the control plane's metrics on each scrape.

    Only nodes of the fleet file are reported: a node removed from it leaves the metrics (its
    counters with it), which keeps every label value one of the fleet's own names.
    """

    def __init__(self, fleet: Fleet, store: StateStore) -> None:
        self.fleet = fleet
        self.store = store

    def collect(self) -> Iterator[Metric]:
        yield from self._nodes()
        yield from self._drains()
        yield from self._steps()
        yield from self._dns()

    def _nodes(self) -> Iterator[Metric]:
        records = {record.name: record for record in self.store.all()}
        counts: Counter[tuple[str, str]] = Counter()
        since = GaugeMetricFamily(
            "clonefleet_node_state_since_timestamp_seconds",
            "When the node entered its current lifecycle state (Unix time).",
            labels=["node", "region", "state"])
        for name, node in sorted(self.fleet.nodes.items()):
            record = records.get(name)
            # A node of the fleet file that nothing has touched yet is still to be ordered.
            counts[node.region, record.state if record else UNKNOWN_STATE] += 1
            if record is not None:
                since.add_metric([name, node.region, record.state], record.since)
        nodes = GaugeMetricFamily("clonefleet_nodes",
                                  "Nodes of the fleet file per region and lifecycle state.",
                                  labels=["region", "state"])
        # Every pair, zeros included, so "no active node in a region" is a value, not an
        # absent series.
        for region in sorted(self.fleet.regions):
            for state in LIFECYCLE:
                nodes.add_metric([region, state], counts[region, state])
        yield nodes
        yield since

    def _drains(self) -> Iterator[Metric]:
        counts: Counter[tuple[str, str]] = Counter()
        for transition in self.store.history():
            if transition.to_state == "draining" and transition.node in self.fleet.nodes:
                counts[transition.node, drain_source(transition.actor)] += 1
        drains = CounterMetricFamily(
            "clonefleet_drains", "Drains recorded in the state store (active to draining), "
            "per node and the kind of caller; the reason text is in `clonefleet status "
            "--history`.", labels=["node", "source"])
        for node in sorted(self.fleet.nodes):
            for source in DRAIN_SOURCES:
                drains.add_metric([node, source], counts[node, source])
        yield drains

    def _steps(self) -> Iterator[Metric]:
        totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
        last = GaugeMetricFamily("clonefleet_provision_step_last_seconds",
                                 "Duration of the node's latest run of a provisioning step.",
                                 labels=["node", "step"])
        for node in sorted(self.fleet.nodes):
            latest: dict[str, float] = {}
            for record in self.store.steps(node):
                total = totals[record.step, record.status]
                total[0] += 1
                total[1] += record.seconds
                latest[record.step] = record.seconds
            for step, seconds in sorted(latest.items()):
                last.add_metric([node, step], seconds)
        summary = SummaryMetricFamily(
            "clonefleet_provision_step_seconds",
            "Provisioning step durations over all recorded runs, by step and outcome "
            "(done or failed).", labels=["step", "status"])
        for (step, status), (count, seconds) in sorted(totals.items()):
            summary.add_metric([step, status], int(count), seconds)
        yield summary
        yield last

    def _dns(self) -> Iterator[Metric]:
        published = self.store.last_dns_serial()
        if published is not None:
            yield GaugeMetricFamily("clonefleet_dns_published_serial",
                                    "The zone serial of the latest DNS map publish.",
                                    value=published)
        serial = GaugeMetricFamily("clonefleet_dns_server_serial",
                                   "The latest zone serial a node's DNS server accepted.",
                                   labels=["server"])
        push_ok = GaugeMetricFamily("clonefleet_dns_server_push_ok",
                                    "1 if the latest push to the node's DNS server succeeded.",
                                    labels=["server"])
        for record in self.store.dns_servers():
            if record.node not in self.fleet.nodes:
                continue
            if record.serial is not None:
                serial.add_metric([record.node], record.serial)
            push_ok.add_metric([record.node], 1 if record.ok else 0)
        yield serial
        yield push_ok
        yield from self._verify()

    def _verify(self) -> Iterator[Metric]:
        outcome = self.store.get_fact(FLEET_FACTS, VERIFY_FACT)
        if not isinstance(outcome, dict):
            return  # never verified: absent, which an alert can ask about with absent()
        yield GaugeMetricFamily("clonefleet_dns_verify_ok",
                                "1 if the latest `dns verify` reached servers and every one "
                                "agreed with the map.", value=1 if outcome.get("ok") else 0)
        yield GaugeMetricFamily("clonefleet_dns_verify_timestamp_seconds",
                                "When the latest `dns verify` ran (Unix time).",
                                value=float(outcome.get("at") or 0))
        yield GaugeMetricFamily("clonefleet_dns_verify_disagreements",
                                "Answers that disagreed with the map in the latest verify.",
                                value=int(outcome.get("disagreements") or 0))
        disagreeing = set(outcome.get("disagreeing") or [])
        counts = {
            "agrees": len(set(outcome.get("checked") or []) - disagreeing),
            "disagrees": len(disagreeing),
            "unreachable": len(outcome.get("unreachable") or []),
            "unconfigured": len(outcome.get("unconfigured") or []),
        }
        servers = GaugeMetricFamily("clonefleet_dns_verify_servers",
                                    "DNS servers per result of the latest verify.",
                                    labels=["result"])
        for result in VERIFY_RESULTS:
            servers.add_metric([result], counts[result])
        yield servers


def metrics_registry(fleet: Fleet, store: StateStore) -> CollectorRegistry:
    """A registry of the fleet's metrics and the serving process's own (`process_*`)."""
    registry = CollectorRegistry()
    registry.register(FleetCollector(fleet, store))
    ProcessCollector(registry=registry)
    return registry


def read_metrics_token(path: str | Path) -> str:
    """The bearer token `GET /metrics` must carry, from the first line of a file (kept out of
    the command line, where any local user could read it in the process list)."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"metrics token file {path}: cannot read it ({error}); give a "
                          "readable file holding one token") from None
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"metrics token file {path}: no usable token; write one line of "
                          "printable ASCII without spaces, e.g. `openssl rand -hex 32`")
    return token
