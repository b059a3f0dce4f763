#!/usr/bin/env python3
"""Benchmark backupfs side by side with restic and borg on the same generated data.

Sections (choose with --only, default all):

  backup   first backup, unchanged re-backup, backup after a 1 % change; of the mixed tree (MiB/s)
           and of the small-file tree (files/s); repository size; peak RSS and CPU time
  restore  full restore of the latest snapshot of each tree (MiB/s, files/s)
  check    check --read-data (borg: check --verify-data)
  mount    time until the first `ls` inside a snapshot answers, `cp` of the large file out of the
           mount, `tar` of the small-file tree and of the mixed tree through the mount, peak RSS
  prune    twenty snapshots of an evolving corpus (~5 % changed per step), then forget all but the
           last five and prune; wall time, peak RSS, repository size before and after

A tool whose command does not exist yet (e.g. `backupfs mount`) is skipped in that section with a
note. Page caches are dropped before every measured command when possible (root); the output says
whether they were. Every command's peak RSS comes from wait4() on that command alone.

Results: a table per section on stdout (ratios are backupfs/other; for speeds higher is better,
for seconds, sizes and memory lower is better), plus RESULTS/bench-<time>.json and .md.

Expected runtime on a 2-core machine: --scale 1 (2 GiB mixed tree, 100k small files) about
30-45 minutes for all sections and three tools (generation ~1 min, backup ~6, restore ~6,
check ~3, mount ~8, prune ~8); --scale 0.05 about 4-7 minutes (fixed costs dominate). Needs ~4x the corpus size of free
disk under --work (corpus, three repositories, one restore at a time).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib.core import Bench
from benchlib.options import parse_args
from benchlib.runner import log


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    if not bench.tools:
        log("no tool available")
        return 1
    return bench.run()


if __name__ == "__main__":
    sys.exit(main())
