"""forget + prune: a history of snapshots of an evolving tree, then all but the last few removed.

The history is made once (the tools taking turns at each step). Each repeat then prunes a fresh
copy of that repository, with the tool's local cache as it was after the history (a cache newer
than its repository is an error to borg), so every repeat does the same work.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from benchlib.adapters import Tool
from benchlib.core import Bench
from benchlib.corpus import MiB, evolve_step
from benchlib.report import Section
from benchlib.runner import Run, dir_size, log, run_cmd

EVOLVE_FRACTION = 0.05
ROWS = [
    ("incremental backup while making the snapshots", "s", "lower"),
    ("forget + prune", "s", "lower"),
    ("forget + prune: CPU user+sys", "s", "lower"),
    ("forget + prune: peak RSS", "MiB", "lower"),
    ("repository size before", "MiB", "lower"),
    ("repository size after", "MiB", "lower"),
]


def run(bench: Bench, sec: Section) -> None:
    steps, keep = bench.args.prune_steps, bench.args.keep_last
    for metric, unit, better in ROWS:
        sec.row(metric, unit, better)
    usable = []
    for tool in bench.tools:
        if tool.has("forget"):
            usable.append(tool)
        else:
            sec.note(f"{tool.name}: no `forget` command yet, skipped")
            for metric, unit, better in ROWS:
                sec.row(metric, unit, better).skip(tool.name, "no forget command")
    if not usable:
        return
    info = bench.tree("evolve")
    root = info.root
    repos = {t.name: bench.fresh_repo(t, "prune") for t in usable}
    failed: set[str] = set()
    log(
        f"prune: {steps} snapshots of the evolving tree ({info.files} files, {info.bytes / MiB:.0f} MiB), ~5 % changed per step"
    )
    for step in range(steps):
        if step:
            evolve_step(root, step, EVOLVE_FRACTION, bench.corpus.src)
            bench.corpus.mark_changed("evolve")
        took = []
        for tool in usable:
            if tool.name in failed:
                continue
            bench.load_sample()
            r = run_cmd(tool.backup(repos[tool.name], root, f"evolve-{step:02d}"), tool.env(), timeout=bench.timeout)
            if not r.ok:
                failed.add(tool.name)
                sec.note(f"{tool.name}: backup {step} failed: {r.error()}")
                continue
            took.append(f"{tool.name} {r.wall_s:.2f} s")
            if step:
                sec.put(ROWS[0][0], "s", "lower", tool.name, r.wall_s)
        log(f"  step {step + 1}/{steps}: " + ", ".join(took))
    pruned = [t for t in usable if t.name not in failed]
    checks: dict[str, list[bool]] = {}
    saved = {t.name: save(bench, t, repos[t.name]) for t in pruned} if bench.repeat > 1 else {}
    for rep, tool in bench.rounds(pruned):
        repo = repos[tool.name]
        if rep:
            restore(bench, tool, repo, saved[tool.name])
        if tool is pruned[0]:
            log(f"forget + prune, repeat {rep + 1} of {bench.repeat}")
        before = dir_size(repo)[0] / MiB
        runs: list[Run] = []
        for cmd in tool.forget_prune(repo, keep):
            runs.append(bench.measure(tool, cmd))
            sec.raw.append({"tool": tool.name, "repeat": rep, **runs[-1].brief()})
            if not runs[-1].ok:
                break
        if not all(r.ok for r in runs):
            sec.note(f"{tool.name}: {runs[-1].error()}")
            for metric, unit, better in ROWS[1:]:
                sec.put(metric, unit, better, tool.name, None, "failed")
            continue
        after = dir_size(repo)[0] / MiB
        chk = run_cmd(tool.check(repo, read_data=False), tool.env(), timeout=bench.timeout)
        left = tool.count_snapshots(repo)
        checks.setdefault(tool.name, []).append(chk.ok)
        sec.put("forget + prune", "s", "lower", tool.name, sum(r.wall_s for r in runs))
        sec.put("forget + prune: CPU user+sys", "s", "lower", tool.name, sum(r.cpu_s for r in runs))
        sec.put("forget + prune: peak RSS", "MiB", "lower", tool.name, max(r.rss_mib for r in runs))
        sec.put("repository size before", "MiB", "lower", tool.name, before)
        sec.put("repository size after", "MiB", "lower", tool.name, after)
        if left != min(keep, steps):
            sec.note(f"{tool.name}: {left} snapshots left after forget, expected {min(keep, steps)}")
        if not chk.ok:
            sec.note(f"{tool.name}: check after prune FAILED in repeat {rep + 1}: {chk.error()}")
    for tool in pruned:
        ok = checks.get(tool.name, [])
        sec.note(f"{tool.name}: `check` after prune passed in {sum(ok)} of {len(ok)} repeats")
    for paths in saved.values():
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)
    if not bench.args.keep_repos:
        shutil.rmtree(bench.work / "repos" / "prune", ignore_errors=True)
    sec.notes.insert(
        0,
        f"evolving tree: {info.files} files, {info.bytes / MiB:.0f} MiB at the start; each step rewrites, deletes or "
        f"replaces ~5 % of the files; restic `forget --keep-last {keep} --prune`, borg `prune --keep-last {keep}` + "
        f"`compact`, backupfs `forget --keep-last {keep} --prune`; the incremental backups are the {steps - 1} "
        "steps after the first (caches not dropped), the prunes one per repeat, each of a copy of the same history",
    )


def _cache(tool: Tool) -> Path:
    return tool.work / "cache" / tool.name


def save(bench: Bench, tool: Tool, repo: Path) -> tuple[Path, Path]:
    """Copies of the repository and the tool's local cache as they are after the history."""
    copies = (repo.with_name(f"{tool.name}.history"), bench.work / "cache" / f"{tool.name}.history")
    for src, dst in zip((repo, _cache(tool)), copies, strict=True):
        shutil.rmtree(dst, ignore_errors=True)
        if src.exists():
            shutil.copytree(src, dst, symlinks=True)
    return copies


def restore(bench: Bench, tool: Tool, repo: Path, saved: tuple[Path, Path]) -> None:
    for dst, src in zip((repo, _cache(tool)), saved, strict=True):
        shutil.rmtree(dst, ignore_errors=True)
        if src.exists():
            shutil.copytree(src, dst, symlinks=True)
