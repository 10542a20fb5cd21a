# Managed by clonefleet (deploys/hardening.py): no core files from interactive shells.
ulimit -c 0
