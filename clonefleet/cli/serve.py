"""`clonefleet serve` and `clonefleet token issue NODE`.

`serve` runs until interrupted (exit 0 on Ctrl-C or SIGTERM); it exits 2 for a bad option
(listen address, TLS files, read timeout, connection limit, metrics token
file). `token issue` prints the
node's new drain token once (exit 0), or exits 2 for a node the fleet does not have.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import click

from clonefleet.cli import Context, pass_context
from clonefleet.errors import ConfigError


def _listen_address(value: str) -> tuple[str, int]:
    host, separator, port = value.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--listen {value!r} is not HOST:PORT; use e.g. 10.66.0.1:8441")
    return host.strip("[]"), int(port)


@click.command()
@click.option("--listen", default="127.0.0.1:8441", show_default=True,
              help="HOST:PORT; in production the node's WireGuard address.")
@click.option("--tls-cert", default="", help="PEM certificate: serve HTTPS.")
@click.option("--tls-key", default="", help="PEM private key for --tls-cert.")
@click.option("--drain-timeout", default=60.0, show_default=True,
              help="Seconds to wait for DNS servers to confirm a drain.")
@click.option("--read-timeout", default=10.0, show_default=True,
              help="Seconds a client has to send its whole request; then it is cut off.")
@click.option("--max-connections", type=click.IntRange(min=1), default=64, show_default=True,
              help="Connections served at once; more are refused (503) until one ends.")
@click.option("--metrics-token-file", default="",
              help="File holding a bearer token that GET /metrics must carry (default: "
                   "metrics are open to whoever reaches the listen address).")
@pass_context
def serve(ctx: Context, listen: str, tls_cert: str, tls_key: str, drain_timeout: float,
          read_timeout: float, max_connections: int, metrics_token_file: str) -> None:
    """Answer drain requests from smartwatch agents on the nodes; serve metrics."""
    from clonefleet.serve import DrainService, make_server, read_metrics_token

    host, port = _listen_address(listen)
    if tls_key and not tls_cert:
        raise ConfigError("--tls-key needs --tls-cert")
    if not read_timeout > 0:
        raise ConfigError(f"--read-timeout {read_timeout:g} must be a positive number of "
                          "seconds, e.g. 10")
    metrics_token = read_metrics_token(metrics_token_file) if metrics_token_file else ""
    logging.basicConfig(level=logging.INFO, format="clonefleet serve: %(message)s")
    service = DrainService(ctx.fleet, ctx.store, timeout=drain_timeout)
    try:
        server = make_server(service, host, port, tls_cert=tls_cert, tls_key=tls_key,
                             read_timeout=read_timeout, metrics_token=metrics_token,
                             max_connections=max_connections)
    except OSError as error:
        raise ConfigError(f"cannot serve on {listen}: {error}") from None

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    scheme = "https" if tls_cert else "http"
    click.echo(f"serving drain requests and /metrics on "
               f"{scheme}://{host}:{server.server_address[1]}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@click.group()
def token() -> None:
    """Per-node drain tokens for smartwatch."""


@token.command("issue")
@click.argument("node")
@pass_context
def issue(ctx: Context, node: str) -> None:
    """Make NODE a new drain token (revoking the old one) and print it once."""
    from clonefleet.serve import issue_token

    value = issue_token(ctx.fleet, ctx.store, node)
    ctx.emit({"node": node, "token": value}, value)


def register(group: click.Group) -> None:
    group.add_command(serve)
    group.add_command(token)
