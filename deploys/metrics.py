"""Prometheus node exporter on a full-clone node, with the textfile folder that smartwatch and
clonefleet write `*.prom` files to.

It listens on `metrics_port` on every address; the base firewall opens that port (host data
`clonefleet_backend_tcp_ports`) to the mesh and the controller only. Debian's own settings
file is left alone (a changed conffile would hold back unattended upgrades); a systemd drop-in
gives the exporter its arguments.

Host data (defaults in `data_defaults`): `metrics_port`, `metrics_textfile_directory`,
`clonefleet_offline` (see `deploys.base`). A second run reports no changes.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from deploys._paths import template
from deploys._systemd import daemon_reload, offline, unit

UNIT = "prometheus-node-exporter.service"


@deploy("clonefleet metrics", data_defaults={
    "metrics_port": 9100,
    "metrics_textfile_directory": "/var/lib/prometheus/node-exporter",
})
def metrics() -> None:
    apt.packages(name="Node exporter package (from the image)",
                 packages=["prometheus-node-exporter"])
    files.directory(name="Prometheus textfile folder", path=host.data.metrics_textfile_directory,
                    mode="755")
    files.directory(name="Node exporter drop-in folder", path=f"/etc/systemd/system/{UNIT}.d",
                    mode="755")
    dropin = files.template(name="Node exporter listen address and textfile folder",
                            src=template("metrics/node-exporter.conf.j2"),
                            dest=f"/etc/systemd/system/{UNIT}.d/clonefleet.conf", mode="644",
                            port=int(host.data.metrics_port),
                            textfile_directory=host.data.metrics_textfile_directory)
    daemon_reload("systemd reload (node exporter)", dropin.did_change)
    unit("Node exporter running", UNIT)
    if not offline():
        unit("Node exporter restart (changed arguments)", UNIT, restarted=True,
             condition=dropin.did_change)
