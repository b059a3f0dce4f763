"""Backup: first backup, unchanged re-backup, backup after a 1 % change; repository sizes.

Each tree has its own repository per tool. Every repeat starts from an empty repository and runs
the three backups in order, the tools taking turns in each; the 1 % change is undone after the
repeat (bytes, modes and times), so every repeat backs up the same tree and the repository left
for the later sections holds a snapshot of the pristine tree.
"""

from __future__ import annotations

from benchlib.core import Bench
from benchlib.corpus import MiB, Undo, change_files
from benchlib.report import Section
from benchlib.runner import dir_size, run_cmd

PHASES = (
    ("first", "first backup"),
    ("unchanged", "unchanged re-backup"),
    ("changed", "backup after 1 % change"),
)
CHANGE_FRACTION = 0.01
VERSION_RUNS = 3  # start-up is the best of this many warm `--version` runs


def run(bench: Bench, sec: Section) -> None:
    infos = {t.name: bench.tree(t.name) for t in bench.trees}
    for _rep, tool in bench.rounds():
        best = min(run_cmd(tool.version_cmd(), tool.env(), timeout=120).wall_s for _ in range(VERSION_RUNS))
        sec.put("start-up: `--version` (warm, best of 3)", "s", "lower", tool.name, best)
    for tree in bench.trees:
        info = infos[tree.name]
        for tool in bench.tools:
            bench.forget_repo(tree.name, tool)
        for rep in range(bench.repeat):
            first_snap: dict[str, str] = {}
            for n, (phase, label) in enumerate(PHASES, start=1):
                metric = f"{label}, {tree.label}"
                undo = Undo()
                bench.log_phase(f"backup: {label} of {tree.what}", info, rep)
                try:
                    if phase == "changed":
                        bench.corpus.mark_changed(tree.name)
                        c = change_files(info.root, CHANGE_FRACTION, bench.corpus.src, f"change{rep}:{tree.name}", undo)
                        if rep == 0:
                            sec.note(
                                f"1 % change of {tree.what} (each repeat another, undone afterwards): "
                                f"{c['files_changed']} files, {c['bytes_changed'] / MiB:.1f} MiB overwritten"
                            )
                    for tool in bench.tools:
                        if phase != "first" and tool.name not in first_snap:
                            continue  # its first backup failed in this repeat
                        repo = bench.fresh_repo(tool, tree.name) if phase == "first" else bench.repo(tool, tree.name)
                        before = dir_size(repo)[0]
                        archive = f"{tree.name}-{n}"
                        r = bench.measure(tool, tool.backup(repo, info.root, archive))
                        sec.raw.append(
                            {"tool": tool.name, "phase": phase, "tree": tree.name, "repeat": rep, **r.brief()}
                        )
                        if not r.ok:
                            sec.put(metric, "s", "lower", tool.name, None, "failed", tree.name)
                            sec.note(f"{tool.name}: {r.error()}")
                            continue
                        if phase == "first":
                            first_snap[tool.name] = tool.snapshot_id(r, archive)
                        speed = info.bytes / MiB / r.wall_s if tree.by_bytes else info.files / r.wall_s
                        sec.put(
                            metric, "MiB/s" if tree.by_bytes else "files/s", "higher", tool.name, speed, tree=tree.name
                        )
                        sec.put(metric, "s", "lower", tool.name, r.wall_s, tree=tree.name)
                        sec.put(f"{metric}: CPU user+sys", "s", "lower", tool.name, r.cpu_s, tree=tree.name)
                        sec.put(f"{metric}: peak RSS", "MiB", "lower", tool.name, r.rss_mib, tree=tree.name)
                        if phase == "first":
                            app, alloc = dir_size(repo)
                            sec.put(
                                f"repository size after the first backup, {tree.label}",
                                "MiB",
                                "lower",
                                tool.name,
                                app / MiB,
                                tree=tree.name,
                            )
                            sec.put(
                                f"repository size after the first backup, {tree.label}, allocated (du)",
                                "MiB",
                                "lower",
                                tool.name,
                                alloc / MiB,
                                tree=tree.name,
                            )
                        else:
                            growth = (dir_size(repo)[0] - before) / MiB
                            sec.put(f"{metric}: repository growth", "MiB", "lower", tool.name, growth, tree=tree.name)
                finally:
                    if phase == "changed":
                        undo.apply()
                        bench.corpus.mark_pristine(tree.name)
            for tool in bench.tools:
                if tool.name in first_snap:
                    size = dir_size(bench.repo(tool, tree.name))[0] / MiB
                    sec.put(
                        f"repository size after the three backups, {tree.label}",
                        "MiB",
                        "lower",
                        tool.name,
                        size,
                        tree=tree.name,
                    )
            # the last repeat's repositories serve the later sections: their first snapshot is of
            # the pristine tree, which is on disk again
            for tool in bench.tools:
                if tool.name in first_snap and rep == bench.repeat - 1:
                    bench.record_repo(tree.name, tool, first_snap[tool.name])
    sec.note(
        "source data: "
        + "; ".join(f"{t.label} {infos[t.name].files} files, {infos[t.name].bytes / MiB:.0f} MiB" for t in bench.trees)
    )
    for tool in bench.tools:
        cache = tool.work / "cache" / tool.name
        if cache.exists():
            sec.note(f"{tool.name} local cache at the end (not in repository size): {dir_size(cache)[0] / MiB:.1f} MiB")
