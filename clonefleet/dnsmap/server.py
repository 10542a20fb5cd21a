"""The PowerDNS Authoritative settings clonefleet's map needs on a node.

One function so the node deploy and the test servers run PowerDNS the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# Debian's sqlite3 schema for the gsqlite3 backend; the database must be created from it.
SQLITE_SCHEMA = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")

# Where `deploys.dns` puts PowerDNS's files on a node.
NODE_CONFIG = "/etc/powerdns/pdns.d/clonefleet.conf"
NODE_DATABASE = "/var/lib/powerdns/clonefleet.sqlite3"
NODE_GEOIP_DATABASE = "/etc/powerdns/clonefleet-nodes.mmdb"
NODE_GEOIP_ZONES = "/etc/powerdns/clonefleet-geo-zones.yaml"
# The names of the deploy's operations that configure PowerDNS: when all of them succeeded on
# a node, its server answers from the map and the control plane records its `dns_endpoint`.
NODE_CONFIG_OPERATIONS = frozenset({
    "PowerDNS database", "PowerDNS GeoIP node locations", "PowerDNS GeoIP zones",
    "PowerDNS configuration", "PowerDNS service",
})


def powerdns_settings(
    *,
    database: str | Path,
    geoip_databases: Sequence[str | Path],
    geoip_zones_file: str | Path,
    api_key: str,
    dns_address: str = "0.0.0.0",
    dns_port: int = 53,
    api_address: str = "127.0.0.1",
    api_port: int = 8081,
    api_allow_from: str = "127.0.0.1,::1",
    small: bool = False,
) -> dict[str, str]:
    """Given paths and addresses, return pdns.conf settings (key → value).

    - `launch=gsqlite3,geoip`: zones live in SQLite so the HTTP API can create and change them
      (the bind backend cannot); the geoip backend only supplies the GeoIP lookups that LUA's
      `latlon()` uses, with no zones of its own (`geoip_zones_file` holds `domains: []`).
    - `geoip_databases`: clonefleet's node database first, then optionally a client database
      such as GeoLite2-City; PowerDNS asks them in order.
    - `small`: one thread each and small caches, for running dozens of servers on one machine.
    """
    settings = {
        "launch": "gsqlite3,geoip",
        "gsqlite3-database": str(database),
        "geoip-database-files": " ".join(f"mmdb:{path}" for path in geoip_databases),
        "geoip-zones-file": str(geoip_zones_file),
        "enable-lua-records": "yes",
        "edns-subnet-processing": "yes",
        "local-address": dns_address,
        "local-port": str(dns_port),
        "api": "yes",
        "api-key": api_key,
        "webserver": "yes",
        "webserver-address": api_address,
        "webserver-port": str(api_port),
        "webserver-allow-from": api_allow_from,
        # The version check is a DNS query to the internet; nodes and tests do without it.
        "security-poll-suffix": "",
        "default-soa-edit": "",
        # WAL journal (PowerDNS's default, stated so it cannot change under us) with
        # synchronous=NORMAL: a commit no longer waits for an fsync, which with 30 servers
        # sharing a disk cut a drain's PATCH from ~68 to ~37 ms (median). WAL keeps the
        # database intact on power loss (only the last commits may be lost; the next publish
        # rewrites whatever differs, and `verify` reports it meanwhile).
        "gsqlite3-pragma-journal-mode": "WAL",
        "gsqlite3-pragma-synchronous": "1",
    }
    if small:
        settings.update({
            "distributor-threads": "1",
            "receiver-threads": "1",
            "max-cache-entries": "1000",
            "max-packet-cache-entries": "1000",
            "webserver-max-bodysize": "2",
        })
    return settings


def render_config(settings: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in sorted(settings.items()))
