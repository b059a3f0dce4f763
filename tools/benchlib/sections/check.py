"""check --read-data (borg: check --verify-data) of each tree's repository."""

from __future__ import annotations

from benchlib.core import Bench
from benchlib.corpus import MiB
from benchlib.report import Section
from benchlib.runner import dir_size, log


def run(bench: Bench, sec: Section) -> None:
    for tree in bench.trees:
        bench.ensure_repos(tree.name)
        metric = f"check --read-data, {tree.label}"
        for rep, tool in bench.rounds():
            if tool is bench.tools[0]:
                log(f"check --read-data of the {tree.label} repositories, repeat {rep + 1} of {bench.repeat}")
            repo = bench.repo(tool, tree.name)
            size = dir_size(repo)[0] / MiB
            r = bench.measure(tool, tool.check(repo, read_data=True))
            sec.raw.append({"tool": tool.name, "tree": tree.name, "repeat": rep, **r.brief()})
            if not r.ok:
                sec.put(metric, "s", "lower", tool.name, None, "failed", tree.name)
                sec.note(f"{tool.name}: {r.error()}")
                continue
            sec.put(metric, "s", "lower", tool.name, r.wall_s, tree=tree.name)
            sec.put(f"{metric}, repository MiB/s", "MiB/s", "higher", tool.name, size / r.wall_s, tree=tree.name)
            sec.put(f"{metric}: CPU user+sys", "s", "lower", tool.name, r.cpu_s, tree=tree.name)
            sec.put(f"{metric}: peak RSS", "MiB", "lower", tool.name, r.rss_mib, tree=tree.name)
    sec.note("borg runs `borg check --verify-data`; restic and backupfs `check --read-data`")
