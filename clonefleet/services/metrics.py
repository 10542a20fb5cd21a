"""The `metrics` service: Prometheus node exporter on every node, with the textfile folder
that smartwatch and clonefleet write `*.prom` files to.

It listens on the node's port 9100, which goes into `clonefleet_backend_tcp_ports`: the base
firewall opens it to the mesh and the controller's addresses only (`[fleet]
controller_addresses`, in every node's host data as `clonefleet_controller_addresses`). No
fleet-file settings yet.
"""

from __future__ import annotations

from typing import Any

from clonefleet.services import ServiceContext

NAME = "metrics"
PORT = 9100
TEXTFILE_DIRECTORY = "/var/lib/prometheus/node-exporter"


def host_data(context: ServiceContext) -> dict[str, Any]:
    return {
        "metrics_port": PORT,
        "metrics_textfile_directory": TEXTFILE_DIRECTORY,
        "clonefleet_backend_tcp_ports": [PORT],
    }
