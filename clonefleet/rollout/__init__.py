"""`clonefleet update`: security updates rolled across the fleet in safe batches.

So far the parts that need no node to go down: the plan (`plan`: what each node would
upgrade, gathered with pyinfra facts; `batches`: which nodes go together), and the
fleet-wide lock that keeps to one rollout at a time (`lock`). docs/rollout.md.
"""
