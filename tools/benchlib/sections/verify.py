"""Restore drills: backupfs `verify --sample P%` beside what the others have for proving a restore.

restic has `check --read-data-subset P%` (reads P% of the packs and checks their blobs) and
`restore --verify` (reads back what it restored); borg has `check --verify-data` (every chunk, no
subset) and `extract --dry-run`. They do not check the same things (docs/verify.md): the figure
compared is the throughput, the bytes each read and checked per second.
"""

from __future__ import annotations

import shutil

from benchlib.core import Bench
from benchlib.corpus import MiB
from benchlib.report import Section
from benchlib.runner import dir_size, log

SAMPLE_PERCENT = 10


def run(bench: Bench, sec: Section) -> None:
    scratch = bench.work / "drill"
    target = bench.work / "restore"
    for tree in bench.trees:
        snaps = bench.ensure_repos(tree.name)
        info = bench.corpus.info(tree.name)
        drill = f"drill of {SAMPLE_PERCENT}%, {tree.label}"
        full = f"restore --verify, {tree.label}"
        for rep, tool in bench.rounds():
            if tool is bench.tools[0]:
                log(f"restore drills of the {tree.label} repositories, repeat {rep + 1} of {bench.repeat}")
            repo = bench.repo(tool, tree.name)
            scratch.mkdir(parents=True, exist_ok=True)
            r = bench.measure(tool, tool.drill(repo, snaps[tool.name], SAMPLE_PERCENT, scratch))
            sec.raw.append({"tool": tool.name, "tree": tree.name, "repeat": rep, "what": "drill", **r.brief()})
            if r.ok:
                done = tool.drilled_bytes(r, dir_size(repo)[0], SAMPLE_PERCENT)
                sec.put(f"{drill}, MiB/s checked", "MiB/s", "higher", tool.name, done / MiB / r.wall_s, tree=tree.name)
                sec.put(f"{drill}: CPU user+sys", "s", "lower", tool.name, r.cpu_s, tree=tree.name)
            else:
                sec.put(f"{drill}, MiB/s checked", "MiB/s", "higher", tool.name, None, "failed", tree.name)
                sec.note(f"{tool.name}: {r.error()}")
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            cmd, cwd = tool.restore_verify(repo, snaps[tool.name], target)
            r = bench.measure(tool, cmd, cwd=cwd)
            sec.raw.append({"tool": tool.name, "tree": tree.name, "repeat": rep, "what": "restore", **r.brief()})
            speed = info.bytes / MiB / r.wall_s if r.ok else None
            sec.put(f"{full}, MiB/s", "MiB/s", "higher", tool.name, speed, "" if r.ok else "failed", tree.name)
            if not r.ok:
                sec.note(f"{tool.name}: {r.error()}")
    for path in (scratch, target):
        if path.exists():
            shutil.rmtree(path)
    sec.note(
        f"backupfs: `verify --sample {SAMPLE_PERCENT}%` (bytes restored and checked); restic: "
        f"`check --read-data-subset {SAMPLE_PERCENT}%` ({SAMPLE_PERCENT}% of the repository's bytes); borg: "
        "`check --verify-data` of everything (it has no subset; the repository's bytes)"
    )
    sec.note(
        "restore --verify: backupfs and restic `restore --verify`; borg `extract --dry-run` (reads, writes nothing)"
    )
