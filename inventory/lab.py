"""The lab fleet as a pyinfra inventory, for the plain pyinfra CLI:

    pyinfra inventory/lab.py deploys/node.py

Nodes appear once clonefleet has installed them (their sshd address and pinned host key are
recorded in the fleet's state store).
"""

from pathlib import Path

from clonefleet.pyinfra_inventory import hosts_for

nodes = hosts_for(Path(__file__).with_suffix(".toml"))
