"""Mount: first ls, cp, tar and rsync through each tool's mount of each tree's repository.

One session per tree, repeat and tool (the tools taking turns): the first `ls` with the program
cold and warm, then, with page caches dropped before each, `cp` of the large file (mixed tree),
`tar` of the tree (of the tiny-file tree only its first 10,000 x scale files) and
`rsync -aHAX --checksum --dry-run` of the source against the mount (the small-file trees: a
metadata-heavy walk of lookup, getattr, listxattr and readlink, and a fidelity check: every line
it prints is a difference). The mount process's CPU time during each command and its peak RSS
are recorded too.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from benchlib.core import Bench
from benchlib.corpus import MiB, tree_counts
from benchlib.mounting import Step, mount_session
from benchlib.report import Section
from benchlib.runner import log
from benchlib.trees import Tree

LARGE_REL = Path("big") / "large-1g.bin"  # corpus.gen_mixed's large file
TAR = 'tar cf - -C "$1" . | cat >/dev/null'  # through a pipe: GNU tar skips reading when writing to /dev/null
RSYNC = ["rsync", "-aHAX", "--checksum", "--dry-run", "--itemize-changes"]


def rows(tree: Tree, rsync: bool) -> list[tuple[str, str, str]]:
    """(metric, unit, better) of every row the tree gets, so a tool that cannot mount shows n/a."""
    label = tree.label
    speed = "MiB/s" if tree.by_bytes else "files/s"
    out = [
        (f"mount point live after start, {label}", "s", "lower"),
        (f"first ls after start, {label}", "s", "lower"),
        (f"first ls, program cold too, {label}", "s", "lower"),
    ]
    if tree.by_bytes:
        out += [("cp of the large file", "MiB/s", "higher"), ("cp of the large file: mount daemon CPU", "s", "lower")]
    out += [(f"tar through the mount, {label}", speed, "higher"), (f"tar, {label}: mount daemon CPU", "s", "lower")]
    if not tree.by_bytes and rsync:
        out += [(f"rsync --checksum vs the source, {label}", "s", "lower")]
        out += [(f"rsync, {label}: mount daemon CPU", "s", "lower")]
    out += [(f"mount process peak RSS (VmHWM), {label}", "MiB", "lower")]
    return out


def run(bench: Bench, sec: Section) -> None:
    usable = []
    for tool in bench.tools:
        if tool.has("mount"):
            usable.append(tool)
        else:
            sec.note(f"{tool.name}: no `mount` command yet, skipped")
    have_rsync = shutil.which("rsync") is not None
    if not have_rsync:
        sec.note("rsync is not installed: no rsync rows")
    for tree in bench.trees:
        for metric, unit, better in rows(tree, have_rsync):
            row = sec.row(metric, unit, better, tree.name)
            for tool in bench.tools:
                if tool not in usable:
                    row.skip(tool.name, "no mount command")
        if not usable:
            continue
        snaps = bench.ensure_repos(tree.name)
        root = bench.corpus.path(tree.name)
        part = root / tree.mount_subset if tree.mount_subset else root
        counts = tree_counts(part)
        large_mib = (root / LARGE_REL).stat().st_size / MiB if tree.by_bytes else 0.0
        for rep, tool in bench.rounds(usable):
            if tool is usable[0]:
                log(f"mount: {tree.what}, repeat {rep + 1} of {bench.repeat}")
            mnt = bench.work / "mnt" / tool.name
            in_mount = tool.path_in_mount(mnt, snaps[tool.name], root)
            part_in = in_mount / tree.mount_subset if tree.mount_subset else in_mount
            steps = []
            if tree.by_bytes:
                steps.append(Step("cp", ["cp", str(in_mount / LARGE_REL), "/dev/null"]))
            steps.append(Step("tar", ["bash", "-c", TAR, "tar", str(part_in)]))
            if not tree.by_bytes and have_rsync:
                steps.append(Step("rsync", [*RSYNC, f"{part}/", f"{part_in}/"], differences=True))
            try:
                res = mount_session(bench, tool, bench.repo(tool, tree.name), mnt, in_mount, steps)
            except Exception as e:  # keep going with the other tools
                sec.note(f"{tool.name}: mount benchmark of {tree.what} failed: {e}")
                for metric, unit, better in rows(tree, have_rsync):
                    sec.put(metric, unit, better, tool.name, None, "failed", tree.name)
                continue
            sec.raw.append({"tool": tool.name, "tree": tree.name, "repeat": rep, **res})
            rsync = not tree.by_bytes and have_rsync
            put_session(sec, tree, tool.name, res, counts.files, counts.bytes / MiB, large_mib, rsync)
        subset = f" (of {tree.mount_subset}/ only)" if tree.mount_subset else ""
        sec.note(
            f"{tree.what}: tar{' and rsync' if not tree.by_bytes else ''} read {counts.files} files, "
            f"{counts.bytes / MiB:.0f} MiB{subset}"
            + (f"; the large file is {large_mib:.0f} MiB" if tree.by_bytes else "")
        )
    sec.note(
        "first ls: from starting the mount process until listing the tree's root folder inside its snapshot "
        "succeeds (each tree has its own repository; backupfs and restic via ids/<short id>/, borg via "
        "<archive>/); caches dropped, then the program warmed by mounting a one-file repository of the same "
        "tool, so only the measured repository's data is read cold. *program cold too*: warmed only by "
        "`--version`, as after a reboot (a Python program then reads its modules from disk)"
    )
    sec.note(
        "cp: `cp FILE /dev/null`; tar: `tar cf - -C DIR . | cat >/dev/null` (the pipe matters: GNU tar does "
        "not read file contents when writing straight to /dev/null); rsync: `rsync -aHAX --checksum --dry-run "
        "--itemize-changes SOURCE/ MOUNT/` (reads both sides whole); mount daemon CPU: the mount process's "
        "user+system time during the command; caches dropped before each"
    )


def put_session(
    sec: Section, tree: Tree, tool: str, res: dict[str, Any], files: int, mib: float, large_mib: float, rsync: bool
) -> None:
    """One session's figures as one sample of each row (a figure the session lacks counts as failed)."""

    def per(amount: float, seconds: float | None) -> float | None:
        return amount / seconds if seconds else None

    g = res.get
    label, t = tree.label, tree.name
    sec.put(f"mount point live after start, {label}", "s", "lower", tool, g("mounted_s"), tree=t)
    sec.put(f"first ls after start, {label}", "s", "lower", tool, g("first_ls_s"), tree=t)
    cold = f"first ls, program cold too, {label}"
    if "first_ls_cold_s" in res:
        sec.put(cold, "s", "lower", tool, res["first_ls_cold_s"], tree=t)
    else:
        sec.row(cold, "s", "lower", t).skip(tool, "page caches not dropped")
    if tree.by_bytes:
        sec.put("cp of the large file", "MiB/s", "higher", tool, per(large_mib, g("cp_s")), tree=t)
        sec.put("cp of the large file: mount daemon CPU", "s", "lower", tool, g("cp_daemon_cpu_s"), tree=t)
    speed = per(mib if tree.by_bytes else files, g("tar_s"))
    sec.put(f"tar through the mount, {label}", "MiB/s" if tree.by_bytes else "files/s", "higher", tool, speed, tree=t)
    sec.put(f"tar, {label}: mount daemon CPU", "s", "lower", tool, g("tar_daemon_cpu_s"), tree=t)
    if rsync:
        sec.put(f"rsync --checksum vs the source, {label}", "s", "lower", tool, g("rsync_s"), tree=t)
        sec.put(f"rsync, {label}: mount daemon CPU", "s", "lower", tool, g("rsync_daemon_cpu_s"), tree=t)
        if g("rsync_differences"):
            sec.note(f"{tool}: rsync listed {g('rsync_differences')} differences between {tree.what} and its mount")
    sec.put(f"mount process peak RSS (VmHWM), {label}", "MiB", "lower", tool, g("vmhwm_mib"), tree=t)
    for err in g("errors", []):
        sec.note(f"{tool}, {label}: {err}")
