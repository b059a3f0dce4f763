"""The benchmark's shared state: options, tools, corpus trees, repositories, measuring, results.

The sections (benchlib/sections/) do the measuring through a `Bench`; the driver
(benchlib/driver.py) runs them in order and writes the results after each.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchlib.adapters import Backupfs, Borg, Restic, Tool, find_backupfs
from benchlib.corpus import Corpus, MiB, TreeInfo
from benchlib.realtree import RealTreeSpec
from benchlib.report import Section, report_json, report_markdown
from benchlib.runner import RSS_METHOD, Caches, Run, interleave, log, run_cmd
from benchlib.trees import TREES

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
STATE_VERSION = 2  # repos/state.json: {"version", tree: {tool: {"corpus", "settings", "snapshot"}}}


class Bench:
    """What every section works with, in one place: the tools, the corpus, one repository per tool
    and tree (reused across sections and runs while the tree and the tool's settings match), the
    measuring of a command, and the results so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work.resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        real_scale = args.real_tree_scale if args.real_tree_scale is not None else min(1.0, args.scale)
        self.corpus = Corpus(
            self.work, args.seed, args.scale, RealTreeSpec(sources=tuple(args.real_tree_from), fraction=real_scale)
        )
        self.caches = Caches(not args.no_drop_caches)
        self.timeout: float = args.timeout
        self.repeat: int = args.repeat
        self.trees = [TREES[name] for name in args.trees]
        all_tools: dict[str, Tool] = {
            "backupfs": Backupfs(
                "backupfs",
                find_backupfs(args.backupfs),
                self.work,
                f"compression {args.backupfs_compression}, aegis256, 16 MiB packs",
            ),
            "restic": Restic("restic", "restic", self.work, "repository version 2, compression auto (zstd)"),
            "borg": Borg("borg", "borg", self.work),
        }
        bfs = all_tools["backupfs"]
        assert isinstance(bfs, Backupfs)
        bfs.compression = args.backupfs_compression
        borg = all_tools["borg"]
        assert isinstance(borg, Borg)
        borg.encryption = args.borg_encryption
        borg.settings = f"--encryption {args.borg_encryption}, --compression lz4"
        self.tools: list[Tool] = []
        self.skipped_tools: dict[str, str] = {}
        for name in args.tools:
            t = all_tools[name]
            if t.available():
                self.tools.append(t)
            else:
                self.skipped_tools[name] = f"{name} not found ({t.exe or 'not on PATH'})"
                log(f"skipping {name}: not found")
        self.names = [t.name for t in self.tools]
        self.sections: list[Section] = []
        self.started = dt.datetime.now(dt.UTC).astimezone()
        self.stamp = self.started.strftime("%Y%m%d-%H%M%S")
        self.out_dir: Path = (args.results or self.work / "results").resolve()
        self.loads: list[float] = []
        self.state_path = self.work / "repos" / "state.json"
        self.meta: dict[str, Any] = {}

    # -- measuring

    def rounds(self, tools: list[Tool] | None = None) -> Iterator[tuple[int, Tool]]:
        """(repeat, tool) for every repeat of every tool, the tools taking turns."""
        return interleave(self.repeat, self.tools if tools is None else tools)

    def load_sample(self) -> None:
        with contextlib.suppress(OSError):
            self.loads.append(float(Path("/proc/loadavg").read_text().split()[0]))

    def measure(self, tool: Tool, cmd: list[str], cwd: Path | None = None, drop: bool = True) -> Run:
        if drop:
            self.caches.drop()
            if self.caches.working:  # else the program is as warm as it gets already
                tool.warm()
        self.load_sample()
        r = run_cmd(cmd, tool.env(), cwd=cwd, timeout=self.timeout)
        status = "ok" if r.ok else r.error()
        log(f"  {tool.name:8} {r.wall_s:8.2f} s  rss {r.rss_mib:7.1f} MiB  cpu {r.cpu_s:7.2f} s  {status}")
        return r

    def log_phase(self, what: str, info: TreeInfo, rep: int) -> None:
        log(f"{what} ({info.files} files, {info.bytes / MiB:.0f} MiB), repeat {rep + 1} of {self.repeat}")

    # -- corpus trees

    def tree(self, name: str) -> TreeInfo:
        """Tree `name`, pristine (made first if needed), recorded in the results' metadata."""
        info = self.corpus.ensure(name, log)
        self.corpus_meta({name: info})
        return info

    def corpus_meta(self, trees: dict[str, TreeInfo]) -> None:
        c = self.meta.setdefault("corpus", {})
        for name, info in trees.items():
            c[name] = {**info.details, "files": info.files, "folders": info.folders, "symlinks": info.symlinks}
            c[name]["bytes"] = info.bytes

    # -- repositories

    def repo(self, tool: Tool, kind: str = "main") -> Path:
        """The repository of `tool` for `kind`: a corpus tree's name, "prune" or "warm"."""
        return self.work / "repos" / kind / tool.name

    def fresh_repo(self, tool: Tool, kind: str) -> Path:
        repo = self.repo(tool, kind)
        if repo.exists():
            shutil.rmtree(repo)
        repo.parent.mkdir(parents=True, exist_ok=True)
        r = run_cmd(tool.init(repo), tool.env(), timeout=600)
        if not r.ok:
            raise RuntimeError(f"{tool.name} init failed: {r.error()}")
        return repo

    def load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {"version": STATE_VERSION}
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return {"version": STATE_VERSION}  # an older layout: its repositories are made again
        return data

    def save_state(self, state: dict[str, Any]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(state, indent=1))

    def forget_repo(self, tree: str, tool: Tool) -> None:
        state = self.load_state()
        state.get(tree, {}).pop(tool.name, None)
        self.save_state(state)

    def record_repo(self, tree: str, tool: Tool, snapshot: str) -> None:
        """The repository of `tool` for `tree` holds `snapshot` of the pristine tree (reused by the
        sections after the backup section, and by later runs with --only)."""
        state = self.load_state()
        state.setdefault(tree, {})[tool.name] = {
            "corpus": self.corpus.stamp(tree),
            "settings": tool.repo_key(),
            "snapshot": snapshot,
        }
        self.save_state(state)

    def ensure_repos(self, tree: str) -> dict[str, str]:
        """{tool: snapshot id} of each tool's repository for `tree`, holding a snapshot of the pristine
        tree: the one the backup section left, else made now without measuring."""
        self.tree(tree)
        key = self.corpus.stamp(tree)
        snaps: dict[str, str] = {}
        for tool in self.tools:
            st = self.load_state().get(tree, {}).get(tool.name)
            if (
                st
                and st.get("corpus") == key
                and tool.made_with(st.get("settings", {}))
                and self.repo(tool, tree).is_dir()
            ):
                snaps[tool.name] = st["snapshot"]
                continue
            log(f"preparing the {tool.name} repository of the {tree} tree (not measured)")
            repo = self.fresh_repo(tool, tree)
            r = run_cmd(tool.backup(repo, self.corpus.path(tree), f"{tree}-1"), tool.env(), timeout=self.timeout)
            if not r.ok:
                raise RuntimeError(f"{tool.name} backup failed: {r.error()}")
            snaps[tool.name] = tool.snapshot_id(r, f"{tree}-1")
            self.record_repo(tree, tool, snaps[tool.name])
        return snaps

    # -- results

    def write_results(self) -> tuple[Path, Path]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        jpath = self.out_dir / f"bench-{self.stamp}.json"
        mpath = self.out_dir / f"bench-{self.stamp}.md"
        self.meta["caches"] = self.caches.note or "no measured command ran"
        self.meta["rss"] = RSS_METHOD
        if self.loads:
            self.meta["load_average_1min"] = {"min": min(self.loads), "max": max(self.loads)}
        jpath.write_text(json.dumps(report_json(self.meta, self.sections), indent=1, default=str))
        mpath.write_text(self.markdown())
        return jpath, mpath

    def markdown(self) -> str:
        return report_markdown(self.meta, self.sections, self.names, list(self.skipped_tools.values()))

    def collect_meta(self) -> None:
        cpu = "?"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem = 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            mem = int(Path("/proc/meminfo").read_text().split()[1]) / (1 << 20)
        commit = "?"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            rev = subprocess.run(
                ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            )
            dirty = subprocess.run(
                ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "backupfs"], capture_output=True, text=True
            )
            commit = rev.stdout.strip() + (" (with uncommitted changes in backupfs/)" if dirty.stdout.strip() else "")
        self.meta = {
            "date": self.started.isoformat(timespec="seconds"),
            "scale": self.args.scale,
            "real_tree_scale": self.corpus.real.fraction,
            "seed": self.args.seed,
            "repeat": self.repeat,
            "sections": self.args.only,
            "trees": [t.name for t in self.trees],
            "method": (
                f"every figure is the median of {self.repeat} repeat(s), shown as median (min to max); in each "
                "repeat the tools take turns (backupfs, restic, borg, backupfs, …), so a change of machine load "
                "hits all of them alike; ratios are ratios of the medians"
            ),
            "nproc": os.cpu_count(),
            "cpu": cpu,
            "mem_gib": round(mem, 1),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "versions": {t.name: t.version() for t in self.tools},
            "settings": {t.name: t.settings for t in self.tools},
            "backupfs_commit": commit,
            "work": str(self.work),
        }
