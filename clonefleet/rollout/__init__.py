"""`clonefleet update`: security updates rolled across the fleet in safe batches.

The plan (`plan`: what each node would upgrade, gathered with pyinfra facts; `batches`:
which nodes go together), the fleet-wide lock that keeps to one rollout at a time (`lock`),
and the run (`run`: batches re-made from the store before each; `node_steps`: drain →
upgrade → reboot and unlock → health → undrain per node; `progress`: what is recorded to
resume; `report`: the final report and exit codes). docs/rollout.md.
"""
