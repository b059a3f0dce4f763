"""The benchmark: corpora, repositories, the sections, and the driver that runs them."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchlib.adapters import Backupfs, Borg, Restic, Tool, find_backupfs
from benchlib.corpus import Corpus, MiB, TreeInfo, change_files, evolve_step, tree_stats
from benchlib.mounting import tail, unmount, vmhwm_mib
from benchlib.options import SECTIONS
from benchlib.report import Section, section_markdown
from benchlib.runner import RSS_METHOD, Caches, Run, dir_size, log, run_cmd

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work.resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.corpus = Corpus(self.work, args.seed, args.scale)
        self.caches = Caches(not args.no_drop_caches)
        self.timeout: float = args.timeout
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

    # -- helpers

    def load_sample(self) -> None:
        with contextlib.suppress(OSError):
            self.loads.append(float(Path("/proc/loadavg").read_text().split()[0]))

    def measure(self, tool: Tool, cmd: list[str], cwd: Path | None = None, drop: bool = True) -> Run:
        if drop:
            self.caches.drop()
            tool.warm()
        self.load_sample()
        r = run_cmd(cmd, tool.env(), cwd=cwd, timeout=self.timeout)
        status = "ok" if r.ok else r.error()
        log(f"  {tool.name:8} {r.wall_s:8.2f} s  rss {r.rss_mib:7.1f} MiB  cpu {r.cpu_s:7.2f} s  {status}")
        return r

    def repo(self, tool: Tool, kind: str = "main") -> Path:
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
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_state(self, state: dict[str, Any]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(state, indent=1))

    def corpus_key(self) -> dict[str, Any]:
        stamp = json.loads((self.corpus.dir / "stamp.json").read_text())
        return {k: stamp.get(k) for k in ("mixed", "small")}

    def write_results(self) -> tuple[Path, Path]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        jpath = self.out_dir / f"bench-{self.stamp}.json"
        mpath = self.out_dir / f"bench-{self.stamp}.md"
        self.meta["caches"] = self.caches.note or "no measured command ran"
        self.meta["rss"] = RSS_METHOD
        if self.loads:
            self.meta["load_average_1min"] = {"min": min(self.loads), "max": max(self.loads)}
        data = {
            "meta": self.meta,
            "sections": [
                {
                    "name": s.name,
                    "title": s.title,
                    "duration_s": s.duration_s,
                    "notes": s.notes,
                    "rows": [asdict(r) for r in s.rows],
                    "commands": s.raw,
                }
                for s in self.sections
            ],
        }
        jpath.write_text(json.dumps(data, indent=1, default=str))
        mpath.write_text(self.markdown())
        return jpath, mpath

    def markdown(self) -> str:
        m = self.meta
        lines = [
            f"## Results {m['date']} (scale {m['scale']}, seed {m['seed']})",
            "",
            f"- machine: {m['nproc']} cores, {m['cpu']}, {m['mem_gib']} GiB RAM, kernel {m['kernel']}, "
            f"Python {m['python']}",
            f"- versions: {'; '.join(f'{k}: {v}' for k, v in m['versions'].items())}",
            f"- settings: {'; '.join(f'{k}: {v}' for k, v in m['settings'].items())}",
            f"- backupfs commit: {m['backupfs_commit']}",
            f"- corpus: {'; '.join(f'{k}: {v}' for k, v in m.get('corpus', {}).items())}",
            f"- {m.get('rss', '')}",
            f"- {m.get('caches', '')}; 1-minute load average during the run: "
            f"{m.get('load_average_1min', {}).get('min', '?')}-{m.get('load_average_1min', {}).get('max', '?')}",
            "- ratios are backupfs/other: for speeds (MiB/s, files/s) above 1x means backupfs is faster; "
            "for seconds, sizes and memory below 1x means backupfs is better",
        ]
        if self.skipped_tools:
            lines.append(f"- tools skipped: {'; '.join(self.skipped_tools.values())}")
        lines.append("")
        for s in self.sections:
            lines.append(section_markdown(s, self.names))
        return "\n".join(lines)

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
            "seed": self.args.seed,
            "sections": self.args.only,
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

    # -- preparing repositories without measuring (for --only restore/check/mount)

    def ensure_main_repos(self) -> dict[str, dict[str, str]]:
        """Repositories holding a snapshot of the mixed and the small tree as they are on disk now."""
        state = self.load_state()
        trees = {}
        for name in ("mixed", "small"):
            if not self.corpus.exists(name):
                self.corpus.ensure(name, log)
            trees[name] = self.corpus.path(name)
        key = self.corpus_key()
        snaps: dict[str, dict[str, str]] = {}
        for tool in self.tools:
            st = state.get(tool.name)
            if st and st.get("corpus") == key and tool.made_with(st.get("settings", {})) and self.repo(tool).is_dir():
                snaps[tool.name] = st["snapshots"]
                continue
            log(f"preparing {tool.name} repository (not measured)")
            repo = self.fresh_repo(tool, "main")
            snaps[tool.name] = {}
            for name, path in trees.items():
                r = run_cmd(tool.backup(repo, path, f"{name}-1"), tool.env(), timeout=self.timeout)
                if not r.ok:
                    raise RuntimeError(f"{tool.name} backup failed: {r.error()}")
                snaps[tool.name][name] = tool.snapshot_id(r, f"{name}-1")
            state[tool.name] = {"corpus": key, "settings": tool.repo_key(), "snapshots": snaps[tool.name]}
            self.save_state(state)
        return snaps

    # -- sections

    def sec_backup(self, sec: Section) -> None:
        trees = {name: self.corpus.ensure(name, log) for name in ("mixed", "small")}
        self.corpus_meta(trees)
        state = self.load_state()
        for tool in self.tools:
            state.pop(tool.name, None)
            self.fresh_repo(tool, "main")
        self.save_state(state)
        for tool in self.tools:
            best = min(run_cmd(tool.version_cmd(), tool.env(), timeout=120).wall_s for _ in range(3))
            sec.put("start-up: `--version` (warm, best of 3)", "s", "lower", tool.name, best)
        snaps: dict[str, dict[str, str]] = {t.name: {} for t in self.tools}
        phases = [
            ("first", "first backup"),
            ("unchanged", "unchanged re-backup"),
            ("changed", "backup after 1 % change"),
        ]
        for n, (phase, label) in enumerate(phases, start=1):
            if phase == "changed":
                for name in trees:
                    c = change_files(self.corpus.path(name), 0.01, self.corpus.src, f"change1:{name}")
                    self.corpus.mark_changed(name)
                    sec.notes.append(
                        f"1 % change of {name}: {c['files_changed']} files, {c['bytes_changed'] / MiB:.1f} MiB overwritten"
                    )
                    files, total = tree_stats(self.corpus.path(name))
                    trees[name] = TreeInfo(trees[name].root, files, total, 0)
            for name, info in trees.items():
                log(f"backup: {label} of {name} ({info.files} files, {info.bytes / MiB:.0f} MiB)")
                for tool in self.tools:
                    repo = self.repo(tool)
                    before = dir_size(repo)[0]
                    r = self.measure(tool, tool.backup(repo, info.root, f"{name}-{n}"))
                    sec.raw.append({"tool": tool.name, "phase": phase, "tree": name, **r.brief()})
                    added = (dir_size(repo)[0] - before) / MiB
                    if not r.ok:
                        sec.put(f"{label}, {name}", "s", "lower", tool.name, None, "failed")
                        sec.notes.append(f"{tool.name}: {r.error()}")
                        continue
                    snaps[tool.name][name] = tool.snapshot_id(r, f"{name}-{n}")
                    if name == "mixed":
                        sec.put(f"{label}, mixed", "MiB/s", "higher", tool.name, info.bytes / MiB / r.wall_s)
                    else:
                        sec.put(f"{label}, small files", "files/s", "higher", tool.name, info.files / r.wall_s)
                    sec.put(f"{label}, {name}", "s", "lower", tool.name, r.wall_s)
                    sec.put(f"{label}, {name}: CPU user+sys", "s", "lower", tool.name, r.cpu_s)
                    sec.put(f"{label}, {name}: peak RSS", "MiB", "lower", tool.name, r.rss_mib)
                    if phase != "first":
                        sec.put(f"{label}, {name}: repository growth", "MiB", "lower", tool.name, added)
            if phase == "first":
                for tool in self.tools:
                    app, alloc = dir_size(self.repo(tool))
                    sec.put("repository size after first backups", "MiB", "lower", tool.name, app / MiB)
                    sec.put(
                        "repository size after first backups, allocated (du)", "MiB", "lower", tool.name, alloc / MiB
                    )
        for tool in self.tools:
            app, _ = dir_size(self.repo(tool))
            sec.put("repository size after all 6 backups", "MiB", "lower", tool.name, app / MiB)
        src_mib = sum(i.bytes for i in trees.values()) / MiB
        sec.notes.append(f"source data: {src_mib:.0f} MiB in {sum(i.files for i in trees.values())} files")
        for tool in self.tools:
            cache = self.work / "cache" / tool.name
            if cache.exists():
                sec.notes.append(
                    f"{tool.name} local cache (not in repository size): {dir_size(cache)[0] / MiB:.1f} MiB"
                )
        state = self.load_state()
        key = self.corpus_key()
        for tool in self.tools:
            if set(snaps[tool.name]) == {"mixed", "small"}:
                state[tool.name] = {"corpus": key, "settings": tool.repo_key(), "snapshots": snaps[tool.name]}
        self.save_state(state)

    def corpus_meta(self, trees: dict[str, TreeInfo]) -> None:
        c = self.meta.setdefault("corpus", {})
        for name, info in trees.items():
            c[name] = f"{info.files} files, {info.bytes / MiB:.0f} MiB"

    def sec_restore(self, sec: Section) -> None:
        snaps = self.ensure_main_repos()
        target = self.work / "restore"
        for name in ("mixed", "small"):
            src = self.corpus.path(name)
            files, total = tree_stats(src)
            self.corpus_meta({name: TreeInfo(src, files, total, 0)})
            log(f"restore: {name} ({files} files, {total / MiB:.0f} MiB)")
            for tool in self.tools:
                if target.exists():
                    shutil.rmtree(target)
                target.mkdir(parents=True)
                cmd, cwd = tool.restore(self.repo(tool), snaps[tool.name][name], target)
                r = self.measure(tool, cmd, cwd=cwd)
                t0 = time.perf_counter()
                os.sync()
                sync_s = time.perf_counter() - t0
                sec.raw.append({"tool": tool.name, "tree": name, "sync_after_s": sync_s, **r.brief()})
                if not r.ok:
                    sec.put(f"restore {name}", "s", "lower", tool.name, None, "failed")
                    sec.notes.append(f"{tool.name}: {r.error()}")
                    continue
                restored = target / str(src).lstrip("/")
                problem = verify_restore(src, restored)
                if problem:
                    sec.notes.append(f"{tool.name} restore of {name} is WRONG: {problem}")
                if name == "mixed":
                    sec.put("restore mixed", "MiB/s", "higher", tool.name, total / MiB / r.wall_s)
                else:
                    sec.put("restore small files", "files/s", "higher", tool.name, files / r.wall_s)
                sec.put(f"restore {name}", "s", "lower", tool.name, r.wall_s)
                sec.put(f"restore {name}: sync afterwards", "s", "lower", tool.name, sync_s)
                sec.put(f"restore {name}: CPU user+sys", "s", "lower", tool.name, r.cpu_s)
                sec.put(f"restore {name}: peak RSS", "MiB", "lower", tool.name, r.rss_mib)
        if target.exists():
            shutil.rmtree(target)
        sec.notes.append(
            "each restore is checked afterwards: same file count and bytes as the source, and 100 sampled files byte-identical"
        )

    def sec_check(self, sec: Section) -> None:
        self.ensure_main_repos()
        log("check --read-data")
        for tool in self.tools:
            repo = self.repo(tool)
            size = dir_size(repo)[0] / MiB
            r = self.measure(tool, tool.check(repo, read_data=True))
            sec.raw.append({"tool": tool.name, **r.brief()})
            if not r.ok:
                sec.put("check --read-data", "s", "lower", tool.name, None, "failed")
                sec.notes.append(f"{tool.name}: {r.error()}")
                continue
            sec.put("check --read-data", "s", "lower", tool.name, r.wall_s)
            sec.put("check --read-data, repository MiB/s", "MiB/s", "higher", tool.name, size / r.wall_s)
            sec.put("check --read-data: CPU user+sys", "s", "lower", tool.name, r.cpu_s)
            sec.put("check --read-data: peak RSS", "MiB", "lower", tool.name, r.rss_mib)
        sec.notes.append("borg runs `borg check --verify-data`; restic and backupfs `check --read-data`")

    def sec_mount(self, sec: Section) -> None:
        for metric, unit, better in MOUNT_ROWS:
            sec.row(metric, unit, better)
        usable = []
        for tool in self.tools:
            if tool.has("mount"):
                usable.append(tool)
            else:
                sec.notes.append(f"{tool.name}: no `mount` command yet, skipped")
                for metric, unit, better in MOUNT_ROWS:
                    sec.put(metric, unit, better, tool.name, None, "n/a")
        if not usable:
            return
        snaps = self.ensure_main_repos()
        mixed, small = self.corpus.path("mixed"), self.corpus.path("small")
        large_rel = Path("big") / "large-1g.bin"
        large_size = (mixed / large_rel).stat().st_size
        small_files, _ = tree_stats(small)
        mixed_files, mixed_bytes = tree_stats(mixed)
        for tool in usable:
            log(f"mount: {tool.name}")
            mnt = self.work / "mnt" / tool.name
            try:
                res = self.mount_one(tool, mnt, snaps[tool.name], mixed, small, large_rel)
            except Exception as e:  # keep going with the other tools
                sec.notes.append(f"{tool.name}: mount benchmark failed: {e}")
                for metric, unit, better in MOUNT_ROWS:
                    sec.put(metric, unit, better, tool.name, None, "failed")
                continue
            sec.raw.append({"tool": tool.name, **res})
            g = res.get
            sec.put("mount point live after start", "s", "lower", tool.name, g("mounted_s"))
            sec.put("first ls of a snapshot folder after start", "s", "lower", tool.name, g("first_ls_s"))
            sec.put("first ls, program cold too", "s", "lower", tool.name, g("first_ls_cold_s"))
            sec.put("cp of the large file", "MiB/s", "higher", tool.name, _div(large_size / MiB, g("cp_s")))
            sec.put("tar of the small-file tree", "files/s", "higher", tool.name, _div(small_files, g("tar_small_s")))
            sec.put("tar of the mixed tree", "MiB/s", "higher", tool.name, _div(mixed_bytes / MiB, g("tar_mixed_s")))
            sec.put("mount process peak RSS (VmHWM)", "MiB", "lower", tool.name, g("vmhwm_mib"))
            for err in res.get("errors", []):
                sec.notes.append(f"{tool.name}: {err}")
        sec.notes.append(
            f"first ls: from starting the mount process until listing {{snapshot}}{small} succeeds (the small-file "
            "snapshot, whole repository mounted: backupfs and restic via ids/<short id>/, borg via <archive>/); "
            "caches dropped, then the program warmed by mounting a one-file repository of the same tool, so only "
            "the measured repository's data is read cold. *program cold too*: warmed only by `--version`, as "
            "after a reboot (a Python program then reads its modules from disk)"
        )
        sec.notes.append(
            "cp: `cp FILE /dev/null`; tar: `tar cf - -C DIR . | cat >/dev/null` (the pipe matters: GNU tar does "
            f"not read file contents when writing straight to /dev/null); large file {large_size / MiB:.0f} MiB; small tree {small_files} files, "
            f"mixed tree {mixed_files} files, {mixed_bytes / MiB:.0f} MiB; caches dropped before each"
        )

    def warm_repo(self, tool: Tool) -> tuple[Path, str, Path]:
        """A one-file repository of `tool`, mounted before the measured mount so that the
        program (interpreter, modules, libraries, FUSE binding) is read from disk beforehand
        and only the measured repository's data is cold."""
        src = self.work / "warm-src"
        if not src.exists():
            src.mkdir(parents=True)
            (src / "hello.txt").write_text("hello\n")
        repo = self.repo(tool, "warm")
        marker = repo.parent / f"{tool.name}.snapshot"
        if repo.exists() and marker.exists():
            return repo, marker.read_text().strip(), src
        self.fresh_repo(tool, "warm")
        r = run_cmd(tool.backup(repo, src, "warm"), tool.env(), timeout=600)
        if not r.ok:
            raise RuntimeError(f"{tool.name} backup of the warm-up repository failed: {r.error()}")
        snap = tool.snapshot_id(r, "warm")
        marker.write_text(snap)
        return repo, snap, src

    def start_mount(
        self, tool: Tool, repo: Path, mnt: Path, target: Path, logf: Path
    ) -> tuple[subprocess.Popen[bytes], float, float]:
        """Starts `tool`'s mount of `repo`; returns once listing `target` inside it succeeds:
        (process, seconds until the mount point was live, seconds until the listing answered)."""
        unmount(mnt)
        mnt.mkdir(parents=True, exist_ok=True)
        with open(logf, "ab") as lf:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                tool.mount(repo, mnt), stdout=lf, stderr=lf, stdin=subprocess.DEVNULL, env=tool.env()
            )
        try:
            deadline = t0 + min(self.timeout, 600)
            mounted_at = None
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"mount exited with {proc.returncode}: {tail(logf)}")
                if time.perf_counter() > deadline:
                    raise RuntimeError("no answer from the mount within the time limit")
                if os.path.ismount(mnt):
                    mounted_at = mounted_at or time.perf_counter()
                    try:
                        if os.listdir(target):
                            break
                    except FileNotFoundError:
                        if time.perf_counter() - mounted_at > 30:
                            raise RuntimeError(
                                f"{target} not found in the mount; its root has {sorted(os.listdir(mnt))[:10]}"
                            ) from None
                    except OSError:
                        pass
                time.sleep(0.002)
        except BaseException:
            self.stop_mount(proc, mnt, [])
            raise
        return proc, (mounted_at or t0) - t0, time.perf_counter() - t0

    def stop_mount(self, proc: subprocess.Popen[bytes], mnt: Path, errors: list[str]) -> None:
        unmount(mnt)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            errors.append("mount process did not exit after unmount; had to be signalled")
        unmount(mnt)
        if os.path.ismount(mnt):
            errors.append("mount point still mounted after the process ended")

    def mount_one(
        self, tool: Tool, mnt: Path, snaps: dict[str, str], mixed: Path, small: Path, large_rel: Path
    ) -> dict[str, Any]:
        res: dict[str, Any] = {"errors": []}
        env = tool.env()
        logf = self.work / "mnt" / f"{tool.name}.log"
        logf.unlink(missing_ok=True)
        repo = self.repo(tool)
        small_in = tool.path_in_mount(mnt, snaps["small"], small)
        # 1. Everything cold but the --version warm-up: what a mount costs when the program has
        #    not run for a while (for backupfs, Python's modules are then read from disk).
        self.caches.drop()
        tool.warm()
        proc, _, res["first_ls_cold_s"] = self.start_mount(tool, repo, mnt, small_in, logf)
        self.stop_mount(proc, mnt, res["errors"])
        log(f"  first ls after {res['first_ls_cold_s']:.3f} s (program cold too)")
        # 2. The program warm (one mount of a one-file repository), the repository's data cold.
        warm_repo, warm_snap, warm_src = self.warm_repo(tool)
        self.caches.drop()
        tool.warm()
        proc, _, _ = self.start_mount(tool, warm_repo, mnt, tool.path_in_mount(mnt, warm_snap, warm_src), logf)
        self.stop_mount(proc, mnt, res["errors"])
        self.load_sample()
        proc, res["mounted_s"], res["first_ls_s"] = self.start_mount(tool, repo, mnt, small_in, logf)
        try:
            log(f"  first ls after {res['first_ls_s']:.3f} s (program warm)")
            mixed_in = tool.path_in_mount(mnt, snaps["mixed"], mixed)
            steps: list[tuple[str, list[str]]] = [
                ("cp_s", ["cp", str(mixed_in / large_rel), "/dev/null"]),
                ("tar_small_s", ["bash", "-c", 'tar cf - -C "$1" . | cat >/dev/null', "tar", str(small_in)]),
                ("tar_mixed_s", ["bash", "-c", 'tar cf - -C "$1" . | cat >/dev/null', "tar", str(mixed_in)]),
            ]
            for key, cmd in steps:
                self.caches.drop()
                self.load_sample()
                r = run_cmd(cmd, env, timeout=self.timeout)
                log(f"  {key[:-2]:10} {r.wall_s:8.2f} s  {'ok' if r.ok else r.error()}")
                if r.ok and "tar" in key and r.stderr.strip():
                    res["errors"].append(f"{key[:-2]}: {r.stderr.strip().splitlines()[-1]}")
                if r.ok:
                    res[key] = r.wall_s
                else:
                    res["errors"].append(f"{key[:-2]}: {r.error()}")
            res["vmhwm_mib"] = vmhwm_mib(proc.pid)
        finally:
            self.stop_mount(proc, mnt, res["errors"])
        return res

    def sec_prune(self, sec: Section) -> None:
        steps, keep = self.args.prune_steps, self.args.keep_last
        for metric, unit, better in PRUNE_ROWS:
            sec.row(metric, unit, better)
        usable = []
        for tool in self.tools:
            if tool.has("forget"):
                usable.append(tool)
            else:
                sec.notes.append(f"{tool.name}: no `forget` command yet, skipped")
                for metric, unit, better in PRUNE_ROWS:
                    sec.put(metric, unit, better, tool.name, None, "n/a")
        if not usable:
            return
        self.corpus.ensure("evolve", log)
        root = self.corpus.path("evolve")
        files, total = tree_stats(root)
        self.corpus_meta({"evolve": TreeInfo(root, files, total, 0)})
        repos = {t.name: self.fresh_repo(t, "prune") for t in usable}
        backup_s: dict[str, list[float]] = {t.name: [] for t in usable}
        failed: set[str] = set()
        log(
            f"prune: {steps} snapshots of the evolving tree ({files} files, {total / MiB:.0f} MiB), ~5 % changed per step"
        )
        for step in range(steps):
            if step:
                evolve_step(root, step, 0.05, self.corpus.src)
                self.corpus.mark_changed("evolve")
            for tool in usable:
                if tool.name in failed:
                    continue
                self.load_sample()
                r = run_cmd(tool.backup(repos[tool.name], root, f"evolve-{step:02d}"), tool.env(), timeout=self.timeout)
                if not r.ok:
                    failed.add(tool.name)
                    sec.notes.append(f"{tool.name}: backup {step} failed: {r.error()}")
                    continue
                backup_s[tool.name].append(r.wall_s)
            log(f"  step {step + 1}/{steps}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in backup_s.items() if v))
        for tool in usable:
            if tool.name in failed:
                continue
            repo = repos[tool.name]
            before = dir_size(repo)[0] / MiB
            runs = []
            for cmd in tool.forget_prune(repo, keep):
                runs.append(self.measure(tool, cmd))
                sec.raw.append({"tool": tool.name, **runs[-1].brief()})
                if not runs[-1].ok:
                    break
            if not all(r.ok for r in runs):
                sec.notes.append(f"{tool.name}: {runs[-1].error()}")
                for metric, unit, better in PRUNE_ROWS:
                    sec.put(metric, unit, better, tool.name, None, "failed")
                continue
            after = dir_size(repo)[0] / MiB
            chk = run_cmd(tool.check(repo, read_data=False), tool.env(), timeout=self.timeout)
            left = tool.count_snapshots(repo)
            sec.put(
                "mean incremental backup while making the snapshots",
                "s",
                "lower",
                tool.name,
                sum(backup_s[tool.name][1:]) / max(1, len(backup_s[tool.name]) - 1),
            )
            sec.put("forget + prune", "s", "lower", tool.name, sum(r.wall_s for r in runs))
            sec.put("forget + prune: CPU user+sys", "s", "lower", tool.name, sum(r.cpu_s for r in runs))
            sec.put("forget + prune: peak RSS", "MiB", "lower", tool.name, max(r.rss_mib for r in runs))
            sec.put("repository size before", "MiB", "lower", tool.name, before)
            sec.put("repository size after", "MiB", "lower", tool.name, after)
            if left != min(keep, steps):
                sec.notes.append(f"{tool.name}: {left} snapshots left after forget, expected {min(keep, steps)}")
            sec.notes.append(
                f"{tool.name}: check after prune {'passed' if chk.ok else 'FAILED: ' + chk.error()} ({chk.wall_s:.1f} s)"
            )
        sec.notes.insert(
            0,
            f"evolving tree: {files} files, {total / MiB:.0f} MiB at the start; each step rewrites, deletes or "
            "replaces ~5 % of the files; restic `forget --keep-last 5 --prune`, borg `prune --keep-last 5` + "
            "`compact`, backupfs `forget --keep-last 5 --prune`",
        )

    # -- driver

    def run(self) -> int:
        self.collect_meta()
        titles = {
            "backup": "Backup",
            "restore": "Restore",
            "check": "check --read-data",
            "mount": "Mount",
            "prune": f"forget + prune ({self.args.prune_steps} snapshots, keep last {self.args.keep_last})",
        }
        funcs: dict[str, Callable[[Section], None]] = {
            "backup": self.sec_backup,
            "restore": self.sec_restore,
            "check": self.sec_check,
            "mount": self.sec_mount,
            "prune": self.sec_prune,
        }
        t_all = time.perf_counter()
        rc = 0
        for name in SECTIONS:
            if name not in self.args.only:
                continue
            sec = Section(name, titles[name])
            self.sections.append(sec)
            log(f"== section {name}")
            t0 = time.perf_counter()
            try:
                funcs[name](sec)
            except Exception as e:
                rc = 1
                sec.notes.append(f"section aborted: {type(e).__name__}: {e}")
                log(f"section {name} aborted: {e}")
            sec.duration_s = time.perf_counter() - t0
            sec.notes.append(f"section took {sec.duration_s:.0f} s")
            print(section_markdown(sec, self.names), flush=True)
            self.write_results()
        self.meta["total_s"] = round(time.perf_counter() - t_all, 1)
        jpath, mpath = self.write_results()
        print(self.markdown())
        log(f"done in {self.meta['total_s']:.0f} s; results: {jpath} and {mpath}")
        if not self.args.keep_repos:
            shutil.rmtree(self.work / "repos" / "prune", ignore_errors=True)
        return rc


MOUNT_ROWS = [
    ("mount point live after start", "s", "lower"),
    ("first ls of a snapshot folder after start", "s", "lower"),
    ("first ls, program cold too", "s", "lower"),
    ("cp of the large file", "MiB/s", "higher"),
    ("tar of the small-file tree", "files/s", "higher"),
    ("tar of the mixed tree", "MiB/s", "higher"),
    ("mount process peak RSS (VmHWM)", "MiB", "lower"),
]
PRUNE_ROWS = [
    ("mean incremental backup while making the snapshots", "s", "lower"),
    ("forget + prune", "s", "lower"),
    ("forget + prune: CPU user+sys", "s", "lower"),
    ("forget + prune: peak RSS", "MiB", "lower"),
    ("repository size before", "MiB", "lower"),
    ("repository size after", "MiB", "lower"),
]


def _div(a: float, b: float | None) -> float | None:
    return a / b if b else None


def verify_restore(src: Path, restored: Path, sample: int = 100) -> str:
    """'' when `restored` has the same files and bytes as `src` and sampled files are identical."""
    if not restored.is_dir():
        return f"{restored} does not exist"
    a, b = tree_stats(src), tree_stats(restored)
    if a != b:
        return f"source has {a[0]} files / {a[1]} bytes, restored {b[0]} / {b[1]}"
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
