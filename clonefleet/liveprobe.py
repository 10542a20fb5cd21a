"""What each node is doing now (`clonefleet status --live`), next to what the store records.

A node's two SSH servers are asked for their host key only: the probe runs the SSH key
exchange and closes the connection, never authenticating and never sending anything else, so
a server presenting a key that is not the pinned one is told nothing. Keys are compared with
the fleet's known_hosts, written from the state store's pins (`nodefacts.load_pinned_many`)
exactly as unlock and deploy connect; nothing is ever trusted on first use.

What a node is doing now, in one word:
- `sshd`: its sshd answers with the pinned key;
- `initramfs`: Dropbear answers with the pinned key (the node waits for its unlock);
- `host-key-mismatch`: a port answers with another key (possible impostor or a reinstall);
- `off`: neither answers and the provider says the server is powered off;
- `unreachable`: neither answers and the provider says it is on, or cannot be asked;
- `unpinned`: a port answers but no key is pinned there yet (a node not installed yet, in
  its provider's rescue system): nothing to compare with, and nothing is trusted;
- `unprovisioned`: no address was ever recorded for the node.

The provider is asked only when neither SSH server answers with its pinned key.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import paramiko

from clonefleet.errors import ClonefleetError, one_line
from clonefleet.known_hosts import KnownHosts, public_key_blob
from clonefleet.nodefacts import DROPBEAR, SSHD, NodeFacts, load_pinned_many
from clonefleet.providers.base import SshAccess
from clonefleet.ssh import key_fingerprints
from clonefleet.state import StateStore

LiveState = Literal["sshd", "initramfs", "off", "unreachable", "host-key-mismatch",
                    "unpinned", "unprovisioned"]
LIVE_STATES: tuple[LiveState, ...] = ("sshd", "initramfs", "off", "unreachable",
                                      "host-key-mismatch", "unpinned", "unprovisioned")
# How one port answered: with a pinned key, with another key, with a key where nothing is
# pinned, or not at all.
Answer = Literal["pinned", "other-key", "unpinned", "silent"]

DEFAULT_TIMEOUT = 5.0
DEFAULT_PARALLEL = 16


def presented_host_key(access: SshAccess, timeout: float = DEFAULT_TIMEOUT,
                       prefer: str = "") -> str | None:
    """The host key ("type base64") the SSH server at `access` presents, after the key
    exchange alone; None when nothing answers with SSH in `timeout`. `prefer`: a key type
    asked for first (a server with several host keys presents the type the client prefers,
    so the pinned key's type makes the comparison fair)."""
    try:
        sock = socket.create_connection((access.host, access.port), timeout=timeout)
    except OSError:
        return None
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    if prefer:
        options = transport.get_security_options()
        types = list(options.key_types)
        if prefer in types:
            options.key_types = [prefer, *(kind for kind in types if kind != prefer)]
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"
    except (paramiko.SSHException, OSError, EOFError):
        return None
    finally:
        transport.close()


def fingerprint(key_line: str) -> str:
    """"SHA256:..." of a public key line, as OpenSSH prints it."""
    return key_fingerprints(base64.b64decode(public_key_blob(key_line).split()[1]))[0]


@dataclass(frozen=True)
class PortProbe:
    role: str  # "sshd" | "dropbear"
    host: str
    port: int
    answer: Answer
    presented: str = ""  # "type base64" when something answered with SSH
    pinned: tuple[str, ...] = ()  # the keys known_hosts pins at this address

    @property
    def presented_fingerprint(self) -> str:
        return fingerprint(self.presented) if self.presented else ""

    @property
    def pinned_fingerprints(self) -> tuple[str, ...]:
        return tuple(fingerprint(key) for key in self.pinned)

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "host": self.host, "port": self.port,
                "answer": self.answer, "presented": self.presented_fingerprint,
                "pinned": list(self.pinned_fingerprints)}


@dataclass(frozen=True)
class LiveStatus:
    node: str
    live: LiveState
    detail: str
    probes: tuple[PortProbe, ...] = ()
    provider_status: str = ""  # what the provider said, when it was asked

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "live": self.live, "detail": self.detail,
                "provider_status": self.provider_status,
                "probes": [probe.as_dict() for probe in self.probes]}


def probe_port(role: str, access: SshAccess, known_hosts: KnownHosts,
               timeout: float) -> PortProbe:
    pinned = tuple(known_hosts.keys_for(access.host, access.port))
    prefer = pinned[0].split()[0] if pinned else ""
    presented = presented_host_key(access, timeout, prefer=prefer)
    if presented is None:
        return PortProbe(role, access.host, access.port, "silent", pinned=pinned)
    answer: Answer
    if not pinned:
        answer = "unpinned"
    else:
        answer = "pinned" if public_key_blob(presented) in pinned else "other-key"
    return PortProbe(role, access.host, access.port, answer, presented, pinned)


ProviderStatus = Callable[[str], str]


def classify(node: str, probes: Sequence[PortProbe],
             provider_status: Callable[[], str]) -> LiveStatus:
    """One word for what the node does now, from its probes (and the provider, asked only
    when no port answered with a pinned key)."""
    probes = tuple(probes)
    if not probes:
        return LiveStatus(node, "unprovisioned", "no address recorded: provision it first")
    for probe in probes:
        if probe.answer == "other-key":
            return LiveStatus(
                node, "host-key-mismatch",
                f"{probe.role} at {probe.host}:{probe.port} presents "
                f"{probe.presented_fingerprint}, pinned: "
                f"{', '.join(probe.pinned_fingerprints)}; nothing was sent to it: check the "
                f"node out of band, then `clonefleet keys repin {node}`", probes)
    by_role = {probe.role: probe for probe in probes if probe.answer == "pinned"}
    if SSHD in by_role:
        probe = by_role[SSHD]
        return LiveStatus(node, "sshd", f"sshd answers at {probe.host}:{probe.port} with the "
                                        "pinned key", probes)
    if DROPBEAR in by_role:
        probe = by_role[DROPBEAR]
        return LiveStatus(node, "initramfs", f"Dropbear answers at {probe.host}:{probe.port} "
                                             "with the pinned key: waiting for unlock", probes)
    unpinned = [probe for probe in probes if probe.answer == "unpinned"]
    if unpinned:
        probe = unpinned[0]
        return LiveStatus(node, "unpinned", f"{probe.role} port {probe.host}:{probe.port} "
                                            f"answers ({probe.presented_fingerprint}) but no "
                                            "key is pinned there yet (not installed?)", probes)
    try:
        status = provider_status()
    except (ClonefleetError, OSError) as error:
        return LiveStatus(node, "unreachable", "no SSH answer, and the provider cannot be "
                                               f"asked: {one_line(error)}",
                          probes, "unknown")
    if status == "off":
        return LiveStatus(node, "off", "the provider says it is powered off", probes, status)
    return LiveStatus(node, "unreachable", f"no SSH answer; the provider says {status!r}",
                      probes, status)


def probe_node(facts: NodeFacts, known_hosts: KnownHosts, provider_status: Callable[[], str],
               timeout: float = DEFAULT_TIMEOUT) -> LiveStatus:
    probes = [probe_port(role, access, known_hosts, timeout)
              for role, access in ((SSHD, facts.ssh), (DROPBEAR, facts.unlock))
              if access is not None]
    return classify(facts.node, probes, provider_status)


def probe_fleet(store: StateStore, nodes: Sequence[str], known_hosts: KnownHosts,
                provider_status: ProviderStatus, *, timeout: float = DEFAULT_TIMEOUT,
                parallel: int = DEFAULT_PARALLEL) -> list[LiveStatus]:
    """Every node of `nodes` probed at once (at most `parallel` at a time), in their order.
    `provider_status(node)` is the provider's word for the server ("off", "disk", ...)."""
    facts = load_pinned_many(store, nodes, known_hosts)
    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(nodes)))) as pool:
        futures = [pool.submit(probe_node, facts[name], known_hosts,
                               partial(provider_status, name), timeout)
                   for name in nodes]
        return [future.result() for future in futures]
