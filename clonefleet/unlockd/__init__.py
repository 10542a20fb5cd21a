"""`clonefleet unlockd`: unlock every node that waits in its initramfs, by policy, from one or
more places at once (docs/unlockd.md).

`policy` (pure, imported by the fleet file loader) decides; `boots` records what was seen of
each node's boots in the shared store; `service` runs the loop. Importing this package imports
neither of the last two.
"""
