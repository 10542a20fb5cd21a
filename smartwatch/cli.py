"""`smartwatch`: the node agent's command line.

    smartwatch check [--json] [--report-only]   read, judge, alert, drain, write metrics
    smartwatch flush                            send spooled drain requests only
    smartwatch status [--json]                  what the agent remembers: findings, spool
    smartwatch test-alert                       send a test notice through every alert URL

Exit codes: 0 all disks fine, 1 warnings, 2 critical findings (check only; test-alert: 1 when
the notice was not delivered; flush: 1 while a drain request is pending or refused); 3 the
agent itself failed (bad config, bad alert URL, unreadable state); errors are one line on
stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
import time
from typing import Any

from smartwatch import __version__
from smartwatch.config import DEFAULT_CONFIG, ConfigError, load_config

EXIT_BY_STATUS = {"ok": 0, "warning": 1, "critical": 2}
EXIT_AGENT_ERROR = 3
EXIT_UNDELIVERED = 1  # flush: a drain request is still pending or was refused


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="smartwatch", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file (TOML)")
    parser.add_argument("--version", action="version", version=f"smartwatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check every disk now")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument("--report-only", action="store_true",
                       help="read and judge only: no alerts, drains, self-tests or state writes")
    commands.add_parser("flush", help="send spooled drain requests")
    commands.add_parser("test-alert", help="send a test notice through every alert URL")
    status = commands.add_parser("status", help="show remembered findings and drain requests")
    status.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="smartwatch: %(message)s")
    try:
        sys.exit(_run(arguments))
    except (ConfigError, sqlite3.Error, OSError, ValueError) as error:
        print(f"smartwatch: error: {error}", file=sys.stderr)
        sys.exit(EXIT_AGENT_ERROR)


def _run(arguments: argparse.Namespace) -> int:
    config = load_config(arguments.config)
    if arguments.command == "check":
        from smartwatch.agent import run_check

        result = run_check(config, report_only=arguments.report_only)
        if arguments.json:
            print(json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str))
        else:
            _print_check(result.to_dict())
        return EXIT_BY_STATUS[result.status]
    if arguments.command == "flush":
        from smartwatch.agent import flush_spool

        flushed = flush_spool(config)
        for event in flushed.events:
            print(f"{event.entry.request_id}: {event.answer.outcome} "
                  f"{event.answer.http_status or ''} {event.answer.error}".rstrip())
        if flushed.undelivered:
            # Each request was already named on stderr; scripts and systemd see the status.
            print(f"smartwatch: {len(flushed.undelivered)} drain request(s) not delivered",
                  file=sys.stderr)
            return EXIT_UNDELIVERED
        return 0
    if arguments.command == "test-alert":
        from smartwatch.agent import send_test_alert

        delivered = send_test_alert(config)
        print("delivered" if delivered else "not delivered: check the alert URLs and network",
              file=sys.stdout if delivered else sys.stderr)
        return 0 if delivered else 1
    from smartwatch.history import History

    history = History(config.state_db)
    try:
        data: dict[str, Any] = {
            "node": config.node,
            "last_check_at": history.get_meta("last_check_at") or None,
            "findings": [finding.__dict__ for finding in history.findings().values()],
            "drain_requests": [entry.__dict__ for entry in history.all_spooled()],
        }
    finally:
        history.close()
    if arguments.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        for finding in data["findings"]:
            print(f"{finding['severity']:<9}{finding['reason']}")
        for entry in data["drain_requests"]:
            print(f"drain {entry['request_id']}: {entry['status']} {entry['last_error']}")
    return 0


def _print_check(data: dict[str, Any]) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["checked_at"]))
    print(f"{data['node']}: {data['status']} ({len(data['disks'])} disks, {when})")
    for disk in data["disks"]:
        temperature = f"{disk['temperature']}°C" if disk["temperature"] is not None else "-"
        print(f"  {disk['status']:<9}{disk['device']:<14}{disk['model'][:30]:<31}"
              f"{disk['serial'][:20]:<21}{temperature}")
    for finding in data["findings"]:
        print(f"  - {finding['severity']}: {finding['reason']} [{finding['source']}]")
    for entry in data.get("drain_pending", []):
        print(f"  ! drain request {entry['request_id']} {entry['status']} for "
              f"{entry['pending_seconds'] // 60} min: {entry['last_error'] or 'not sent yet'}")
