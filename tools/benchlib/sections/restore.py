"""Restore: a full restore of each tree's snapshot into an empty folder, checked afterwards."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import time
from pathlib import Path

from benchlib.core import Bench
from benchlib.corpus import MiB, tree_counts
from benchlib.report import Section

SAMPLED_FILES = 100  # compared byte for byte after each restore


def run(bench: Bench, sec: Section) -> None:
    target = bench.work / "restore"
    for tree in bench.trees:
        snaps = bench.ensure_repos(tree.name)
        info = bench.corpus.info(tree.name)
        metric = f"restore {tree.label}"
        for rep, tool in bench.rounds():
            if tool is bench.tools[0]:
                bench.log_phase(f"restore: {tree.what}", info, rep)
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            cmd, cwd = tool.restore(bench.repo(tool, tree.name), snaps[tool.name], target)
            r = bench.measure(tool, cmd, cwd=cwd)
            t0 = time.perf_counter()
            os.sync()
            sync_s = time.perf_counter() - t0
            sec.raw.append({"tool": tool.name, "tree": tree.name, "repeat": rep, "sync_after_s": sync_s, **r.brief()})
            if not r.ok:
                sec.put(metric, "s", "lower", tool.name, None, "failed", tree.name)
                sec.note(f"{tool.name}: {r.error()}")
                continue
            problem = verify_restore(info.root, target / str(info.root).lstrip("/"))
            if problem:
                sec.note(f"{tool.name} restore of {tree.what} is WRONG: {problem}")
            speed = info.bytes / MiB / r.wall_s if tree.by_bytes else info.files / r.wall_s
            sec.put(metric, "MiB/s" if tree.by_bytes else "files/s", "higher", tool.name, speed, tree=tree.name)
            sec.put(metric, "s", "lower", tool.name, r.wall_s, tree=tree.name)
            sec.put(f"{metric}: sync afterwards", "s", "lower", tool.name, sync_s, tree=tree.name)
            sec.put(f"{metric}: CPU user+sys", "s", "lower", tool.name, r.cpu_s, tree=tree.name)
            sec.put(f"{metric}: system time", "s", "lower", tool.name, r.sys_s, tree=tree.name)
            sec.put(f"{metric}: peak RSS", "MiB", "lower", tool.name, r.rss_mib, tree=tree.name)
    if target.exists():
        shutil.rmtree(target)
    sec.note(
        "each restore is checked afterwards: the same regular files, folders, symlinks and bytes as the source, "
        f"and {SAMPLED_FILES} sampled files byte-identical"
    )


def verify_restore(src: Path, restored: Path, sample: int = SAMPLED_FILES) -> str:
    """'' when `restored` holds what `src` holds and sampled files are identical, else what differs."""
    if not restored.is_dir():
        return f"{restored} does not exist"
    a, b = tree_counts(src), tree_counts(restored)
    if a != b:
        return f"source has {a}, restored {b}"
    files = sorted(
        os.path.relpath(os.path.join(d, n), src)
        for d, _s, names in os.walk(src)
        for n in names
        if stat.S_ISREG(os.lstat(os.path.join(d, n)).st_mode)
    )
    for rel in random.Random(0).sample(files, min(sample, len(files))):
        if _sha(src / rel) != _sha(restored / rel):
            return f"{rel} differs"
    return ""


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
