"""A thread asking every DNS server of a fleet for a routed name while a rollout runs.

With ECS /0 (`ANYWHERE`) the answer is the whole active set, so each answer shows how many
of each region's nodes were in service for that server at that moment. The watch keeps, per
region, the fewest of its nodes any answer held; per node, whether any answer lacked it; per
server, how often it answered and what it said when it did not (a lab node's own server is
silent while the node reboots: callers decide whether silence is an error).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from clonefleet.dnsmap.endpoints import Endpoint
from clonefleet.dnsmap.powerdns import ask
from clonefleet.dnsmap.verify import ANYWHERE
from clonefleet.inventory import Fleet


@dataclass
class DnsWatch:
    fleet: Fleet
    servers: Mapping[str, Endpoint]  # server name → endpoint
    name: str  # the routed name, with its trailing dot
    interval: float = 0.1
    timeout: float = 1.0
    fewest: dict[str, int] = field(default_factory=dict)
    absent: set[str] = field(default_factory=set)
    answered: dict[str, int] = field(default_factory=dict)
    silences: dict[str, list[str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> DnsWatch:
        self._thread = threading.Thread(target=self._watch, daemon=True, name="dns-watch")
        self._thread.start()
        return self

    def _watch(self) -> None:
        by_address = {node.ipv4: node for node in self.fleet.nodes.values()}
        while not self._stop.wait(self.interval):
            for server, endpoint in self.servers.items():
                try:
                    answer = ask(endpoint, self.name, "A", client=ANYWHERE,
                                 timeout=self.timeout)
                except Exception as error:  # recorded; the caller judges silence
                    self.silences.setdefault(server, []).append(str(error))
                    continue
                self.answered[server] = self.answered.get(server, 0) + 1
                served = {by_address[address].name for address in answer.addresses
                          if address in by_address}
                self.absent |= set(self.fleet.nodes) - served
                for region in self.fleet.regions:
                    count = sum(1 for node in served if self.fleet.nodes[node].region == region)
                    self.fewest[region] = min(self.fewest.get(region, count), count)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def samples(self) -> int:
        return sum(self.answered.values())

    def check_minimums(self, *, silence_allowed: bool = False) -> None:
        """Every region at or above its minimum in every answer, and answers enough to say
        so; no server silent unless `silence_allowed`."""
        if not silence_allowed:
            assert not self.silences, {server: errors[:3]
                                       for server, errors in self.silences.items()}
        assert self.samples > 20, (self.samples, self.silences)
        for name, region in self.fleet.regions.items():
            assert self.fewest[name] >= region.min_active, (name, self.fewest)
