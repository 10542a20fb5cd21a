#!/bin/sh
# Managed by clonefleet (deploys/smartwatch.py): the agent and pySMART live in /opt/smartwatch;
# apprise, chardet and humanfriendly come from Debian's packages.
PYTHONPATH=/opt/smartwatch/lib exec /usr/bin/python3 -m smartwatch "$@"
