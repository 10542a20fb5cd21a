"""PowerDNS Authoritative on a full-clone node, configured as the DNS map needs it.

The same settings as the control plane's own test servers (`clonefleet.dnsmap.server`):
zones in a gsqlite3 database that `clonefleet dns publish` and `drain` write through the HTTP
API, LUA records, and the fleet's GeoIP database of node locations (built by the control
plane from the fleet file) for `latlon()`. The DNS port answers everyone; the API answers only
the addresses in `dns_api_allow_from` (PowerDNS's own check, besides the firewall).

Usable from clonefleet and from the plain CLI (`pyinfra inventory/lab.py deploys/node.py`).
Host data (defaults in `data_defaults`; `clonefleet.services.dns` computes them per node):

+ dns_api_key: the node's PowerDNS API key (required: a secret from the keystore)
+ dns_geoip_mmdb_base64: the fleet's node-location database, base64 (required)
+ dns_local_address / dns_port: where DNS answers (all addresses, 53)
+ dns_api_address / dns_api_port: where the HTTP API listens (all IPv4 addresses, 8081)
+ dns_api_allow_from: addresses and networks allowed to use the API
+ dns_small: one thread each and small caches (a lab VM with one vCPU)
+ clonefleet_offline: a root filesystem without running systemd (see `deploys.base`)

A second run reports no changes.
"""

from __future__ import annotations

import base64
import shlex
from io import BytesIO

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, systemd

from clonefleet.dnsmap.server import (
    NODE_CONFIG,
    NODE_DATABASE,
    NODE_GEOIP_DATABASE,
    NODE_GEOIP_ZONES,
    SQLITE_SCHEMA,
    powerdns_settings,
    render_config,
)
from deploys._paths import template
from deploys._systemd import offline, unit

PACKAGES = ["pdns-server", "pdns-backend-sqlite3", "pdns-backend-geoip"]
CREATE_DATABASE = ("import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
                   "db.executescript(open(sys.argv[2]).read()); db.commit()")


@operation()
def sqlite_database(path: str, schema: str, user: str, group: str):  # type: ignore[no-untyped-def]
    """Create an SQLite database from a schema file once; an existing one is left alone (it
    holds the zones the control plane published).

    + path: the database file
    + schema: SQL file to initialise it with
    + user / group: its owner
    """
    if host.get_fact(File, path=path):
        host.noop(f"database {path} exists")
        return
    temporary = shlex.quote(f"{path}.new")
    yield (f"rm -f {temporary} && python3 -c {shlex.quote(CREATE_DATABASE)} {temporary} "
           f"{shlex.quote(schema)} && chown {user}:{group} {temporary} && chmod 640 "
           f"{temporary} && mv {temporary} {shlex.quote(path)}")


@deploy("clonefleet dns", data_defaults={
    "dns_api_key": "",
    "dns_geoip_mmdb_base64": "",
    "dns_local_address": "0.0.0.0, ::",
    "dns_port": 53,
    "dns_api_address": "0.0.0.0",
    "dns_api_port": 8081,
    "dns_api_allow_from": ["127.0.0.1", "::1"],
    "dns_small": False,
})
def dns() -> None:
    if not host.data.dns_api_key or not host.data.dns_geoip_mmdb_base64:
        raise DeployError(f"{host.name}: dns_api_key and dns_geoip_mmdb_base64 are missing "
                          "from the host data; deploy through clonefleet or an inventory "
                          "made by clonefleet.pyinfra_inventory")
    apt.packages(name="PowerDNS packages (from the image)", packages=PACKAGES)
    files.directory(name="PowerDNS data folder", path="/var/lib/powerdns", user="pdns",
                    group="pdns", mode="750")
    database = sqlite_database(name="PowerDNS database", path=NODE_DATABASE,
                               schema=str(SQLITE_SCHEMA), user="pdns", group="pdns")
    geoip = files.put(name="PowerDNS GeoIP node locations",
                      src=BytesIO(base64.b64decode(host.data.dns_geoip_mmdb_base64)),
                      dest=NODE_GEOIP_DATABASE, mode="644")
    zones = files.template(name="PowerDNS GeoIP zones", src=template("dns/geo-zones.yaml.j2"),
                           dest=NODE_GEOIP_ZONES, mode="644")
    settings = powerdns_settings(
        database=NODE_DATABASE, geoip_databases=[NODE_GEOIP_DATABASE],
        geoip_zones_file=NODE_GEOIP_ZONES, api_key=host.data.dns_api_key,
        dns_address=host.data.dns_local_address, dns_port=int(host.data.dns_port),
        api_address=host.data.dns_api_address, api_port=int(host.data.dns_api_port),
        api_allow_from=", ".join(host.data.dns_api_allow_from),
        small=bool(host.data.dns_small),
    )
    config = files.template(name="PowerDNS configuration", src=template("dns/pdns.conf.j2"),
                            dest=NODE_CONFIG, user="root", group="pdns", mode="640",
                            config=render_config(settings).rstrip("\n"))
    changed = (database, geoip, zones, config)
    unit("PowerDNS service", "pdns.service")
    if not offline():
        systemd.service(name="PowerDNS restart (changed configuration)", service="pdns.service",
                        running=True, restarted=True,
                        _if=lambda: any(op.did_change() for op in changed))
