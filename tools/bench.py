#!/usr/bin/env python3
"""Benchmark backupfs side by side with restic and borg on the same data, in one run.

Sections (choose with --only, default all):

  backup   first backup, unchanged re-backup, backup after a 1 % change of each tree (MiB/s for the
           mixed tree, files/s for the others); repository sizes; peak RSS and CPU time
  restore  full restore of each tree (MiB/s, files/s), checked against the source afterwards
  check    check --read-data of each tree's repository (borg: check --verify-data)
  mount    per tree: time until the first `ls` inside a snapshot answers (program warm and cold),
           `cp` of the large file out of the mount (mixed tree), `tar` of the tree through the mount
           and `rsync -aHAX --checksum --dry-run` of the source against it (the small-file trees),
           with the mount process's CPU time and peak RSS
  prune    twenty snapshots of an evolving corpus (~5 % changed per step), then forget all but the
           last five and prune; wall time, peak RSS, repository size before and after
  verify   restore drills: backupfs `verify --sample 10%` beside restic `check --read-data-subset
           10%` and borg `check --verify-data` (MiB/s checked), and `restore --verify` of each tree
           (borg: `extract --dry-run`)

Trees (choose with --trees, default all; each has its own repository per tool):

  mixed    ~2 GiB x scale of large, medium, duplicated and shifted files (tools/benchlib/corpus.py)
  small    100,000 x scale files of 1-16 KiB, 100 per folder
  real     a copy of this machine's /usr/include, /usr/share and /usr/lib without files over 1 MiB
           (~115k files in ~15k folders on Debian 12 with the test dependencies); --real-tree-scale
           copies a deterministic subset (tools/benchlib/realtree.py)
  tiny     400,000 x scale files of ~90 bytes, 100 per folder

Every figure is the median of --repeat N runs (default 3), shown with min and max; in each repeat
the tools take turns (backupfs, restic, borg, backupfs, ...), so a change in machine load hits all
of them alike, and ratios are ratios of the medians. A tool whose command does not exist yet is
skipped in that section with a note. Page caches are dropped before every measured command when
possible (root); the output says whether they were. Peak RSS and CPU come from GNU time.

Results: a table per section on stdout (ratios are backupfs/other; for speeds higher is better,
for seconds, sizes and memory lower is better), plus RESULTS/bench-<time>.json (schema
"backupfs-bench", see tools/benchlib/report.py) and .md.

Runtime grows with --repeat and the trees: on a busy 2-core machine --scale 0.05
--real-tree-scale 0.15 took 33 minutes with three tools; a full run (--scale 1, the whole real
tree, --repeat 3) takes hours. Needs ~4x the corpus size of free disk under --work (corpora,
repositories, one restore at a time).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import driver
from benchlib.core import Bench
from benchlib.options import parse_args
from benchlib.runner import log


def main(argv: list[str] | None = None) -> int:
    bench = Bench(parse_args(argv))
    if not bench.tools:
        log("no tool available")
        return 1
    return driver.run(bench)


if __name__ == "__main__":
    sys.exit(main())
