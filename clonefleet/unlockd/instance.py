"""Building an unlockd instance in one of its two places.

- On the controller, from the fleet file: its keystore (controller identity), its operator key
  for Dropbear, the fleet's policy and alert URLs, which it also publishes into the store for
  unlockers; unexpected reboots are drained and, once unlocked and healthy (checked over sshd
  with `clonefleet.health`), undrained through the DNS map.
- As an unlocker elsewhere, from its identity file and the store's address only: everything
  else (nodes, addresses, pinned keys, policy, alert URLs, the escrowed passphrases) comes
  from the store. It cannot log into sshd, so it cannot check health: a node it finds after
  an unexpected reboot is drained in the store (the next DNS publish leaves it out) and the
  controller's instance (or an operator's `clonefleet undrain`) returns it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clonefleet import nodefacts
from clonefleet.inventory import Fleet
from clonefleet.known_hosts import KnownHosts, fleet_known_hosts
from clonefleet.state import StateStore
from clonefleet.state.config import parse_state_url
from clonefleet.unlockd.service import (
    ACTOR,
    WATCHED_STATES,
    Settings,
    Unlockd,
    apprise_alert,
    publish_config,
    published_config,
    store_nodes,
)
from clonefleet.unlockers import UnlockerPassphrases, fleet_keystore

# How long the drain of an unexpected reboot waits for DNS servers to confirm, before the
# unlock goes ahead (the drain stays recorded; a lagging server catches up on the next push).
DRAIN_TIMEOUT = 15.0


def controller_unlockd(fleet: Fleet, store: StateStore, state_dir: Path, settings: Settings,
                       log: Callable[[str], None]) -> Unlockd:
    from clonefleet.ssh import ensure_operator_key

    regions = {name: node.region for name, node in fleet.nodes.items()}
    publish_config(store, fleet.unlock, regions, fleet.alert_urls)
    keystore = fleet_keystore(state_dir, store)
    known_hosts = fleet_known_hosts(state_dir)
    operator = ensure_operator_key(fleet.ssh_key, state_dir)

    def nodes() -> list[str]:
        return [name for name in fleet.nodes
                if store.get_fact(name, nodefacts.UNLOCK_ACCESS) is not None
                and (record := store.get(name)) is not None
                and record.state in WATCHED_STATES]

    def drain(node: str, reason: str) -> None:
        from clonefleet.dnsmap.drain import drain_node

        # The node is down already: below a region's minimum or not, it serves nobody.
        drain_node(fleet, store, node, reason=reason, actor=ACTOR, force=True,
                   timeout=DRAIN_TIMEOUT)

    def undrain(node: str, reason: str) -> None:
        from clonefleet.dnsmap.drain import record_health, undrain_node
        from clonefleet.health import check
        from clonefleet.ssh import RemoteShell

        access = nodefacts.load_pinned(store, node, known_hosts).require_ssh()
        with RemoteShell(access, operator.path, known_hosts=known_hosts.path,
                         what=f"{node} sshd") as shell:
            health = check(shell)
        record_health(store, node, health.ok, source="unlockd",
                      detail="; ".join(health.findings))
        undrain_node(fleet, store, node, actor=ACTOR, reason=reason)

    return Unlockd(store, known_hosts, nodes=nodes, policy=lambda: fleet.unlock,
                   region_of=lambda node: regions.get(node, ""), passphrase=keystore.get,
                   login_key=operator.path, alert=apprise_alert(fleet.alert_urls, log),
                   settings=settings, log=log, drain=drain, undrain=undrain)


def unlocker_store(state_url: str, work_dir: Path) -> StateStore:
    """The shared store from its address alone ("etcd://HOST:PORT[,...]/PREFIX")."""
    from clonefleet.errors import ConfigError
    from clonefleet.state import open_store

    config, problems = parse_state_url(state_url, "--state")
    if problems or config.backend != "etcd":
        problem = problems[0][1] if problems else "an unlocker needs the shared etcd store"
        raise ConfigError(f"--state {state_url!r}: {problem}; write "
                          "etcd://HOST:PORT[,HOST:PORT...]/PREFIX (the fleet's prefix, e.g. "
                          "clonefleet/prod)")
    if not config.prefix:
        raise ConfigError(f"--state {state_url!r}: name the fleet's key prefix, e.g. "
                          "etcd://10.0.0.1:2379/clonefleet/prod")
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return open_store(work_dir, config)


def unlocker_unlockd(store: StateStore, identity: Path, work_dir: Path, settings: Settings,
                     log: Callable[[str], None]) -> Unlockd:
    passphrases = UnlockerPassphrases(store, identity)
    known_hosts = KnownHosts(work_dir / "known_hosts")
    _, _, alert_urls = published_config(store)

    def region_of(node: str) -> str:
        return published_config(store)[1].get(node, "")

    return Unlockd(store, known_hosts, nodes=lambda: store_nodes(store),
                   policy=lambda: published_config(store)[0], region_of=region_of,
                   passphrase=passphrases.get, login_key=identity,
                   alert=apprise_alert(alert_urls, log), settings=settings, log=log)
