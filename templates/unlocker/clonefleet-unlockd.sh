#!/bin/sh
# Managed by clonefleet (deploys/unlocker.py): clonefleet, paramiko, etcd3gw and pyrage live in
# /opt/clonefleet-unlockd; click, rich, requests, apprise and the crypto libraries come from
# Debian's packages.
PYTHONPATH=/opt/clonefleet-unlockd/lib exec /usr/bin/python3 -m clonefleet unlockd "$@"
