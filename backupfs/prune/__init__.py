"""Prune and its retention rules (layer 3; architecture.md "Prune", docs/prune.md).

* `options`: the user's limits (`--max-unused`, `--repack-threshold`, sizes) as `PruneOptions`.
* `table`: every index entry in one compact table, no Python object per blob.
* `plan`: `plan_prune` reads the repository and decides what to delete and repack (`PrunePlan`).
* `execute`: `execute` carries a plan out in a kill-safe order, repacking through the packer.
* `policy`: which snapshots `forget` keeps; pure functions over plain values (no I/O, no clock).

The package imports nothing of its own here, so importing `policy` alone stays pure.
"""
