"""Runs the chosen sections in order, printing each table and writing the results after each."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from benchlib.core import Bench
from benchlib.options import SECTIONS
from benchlib.report import Section, section_markdown
from benchlib.runner import log
from benchlib.sections import backup, check, mount, prune, restore, verify

RUNNERS: dict[str, Callable[[Bench, Section], None]] = {
    "backup": backup.run,
    "restore": restore.run,
    "check": check.run,
    "mount": mount.run,
    "prune": prune.run,
    "verify": verify.run,
}


def titles(bench: Bench) -> dict[str, str]:
    return {
        "backup": "Backup",
        "restore": "Restore",
        "check": "check --read-data",
        "mount": "Mount",
        "prune": f"forget + prune ({bench.args.prune_steps} snapshots, keep last {bench.args.keep_last})",
        "verify": "Restore drills",
    }


def run(bench: Bench) -> int:
    """0 when every section ran to its end (a tool's failed command is a note, not a failure), 1 when
    one was aborted, 2 when the real tree's source folders are missing."""
    missing = [d for d in bench.corpus.real.sources if not os.path.isdir(d)]
    if missing and any(t.name == "real" for t in bench.trees):
        log(f"--real-tree-from: no such folder: {', '.join(missing)} (or leave the real tree out with --trees)")
        return 2
    bench.collect_meta()
    t_all = time.perf_counter()
    rc = 0
    for name in SECTIONS:
        if name not in bench.args.only:
            continue
        sec = Section(name, titles(bench)[name])
        bench.sections.append(sec)
        log(f"== section {name}")
        t0 = time.perf_counter()
        try:
            RUNNERS[name](bench, sec)
        except Exception as e:
            rc = 1
            sec.notes.append(f"section aborted: {type(e).__name__}: {e}")
            log(f"section {name} aborted: {type(e).__name__}: {e}")
        sec.duration_s = time.perf_counter() - t0
        sec.notes.append(f"section took {sec.duration_s:.0f} s")
        print(section_markdown(sec, bench.names), flush=True)
        bench.write_results()
    bench.meta["total_s"] = round(time.perf_counter() - t_all, 1)
    jpath, mpath = bench.write_results()
    print(bench.markdown())
    log(f"done in {bench.meta['total_s']:.0f} s; results: {jpath} and {mpath}")
    return rc
