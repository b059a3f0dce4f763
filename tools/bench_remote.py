#!/usr/bin/env python3
"""Benchmark backupfs side by side with restic on one S3 server: prune and mount (issue 4).

Starts a moto S3 server on 127.0.0.1 (tools/support/servers.py's MotoServer), makes one
bucket per tool, and runs both tools on the same generated data, one phase at a time with the
tools interleaved:

  prune  N snapshots (default 20) of the evolving tree of tools/benchlib/corpus.py (~100 MiB in 2,660 files
         at scale 1, ~5 % changed per step), then `forget --keep-last 5 --prune`; wall time, CPU,
         peak RSS (GNU time %M), bucket size before and after (sum of the object sizes under the
         repository's prefix), `check` afterwards, snapshots left. The first and the incremental
         backups into S3 are reported too.
  mount  first backups of a mixed tree (~270 MiB x scale, with a 128 MiB x scale file) and of a
         small-file tree (2,500 x scale files) into S3 (MiB/s, files/s, CPU, peak RSS), then
         `mount` twice per tool: first with an empty local cache (as on a new machine), then with
         the cache that mount filled. Each mount: time from starting it until the first `ls` of a
         snapshot folder answers, `cp` of the large file to /dev/null, `tar cf - DIR | cat` of the
         small-file tree and of the mixed tree, and the mount process's peak RSS (VmHWM) before
         unmounting (tools/benchlib/mounting.py's mount_session does all that).

For every measured command the S3 requests to the tool's bucket (counted in moto's request log) and
the moto process's CPU time are reported as well: they show which figures are bound by the server.

Both tools keep their local cache in WORK/cache/<tool> (backupfs: BACKUPFS_CACHE_DIR, the same as
--cache-dir; restic: RESTIC_CACHE_DIR). Page caches are dropped before measured commands when
running as root, as in tools/bench.py. The moto server keeps the objects in its own memory and is
a single Python process: it competes with the clients for the CPU, and its speed bounds every
figure here, so S3 numbers say as much about moto as about the clients.

    python3 tools/bench_remote.py [--work DIR] [--scale F] [--only prune,mount] [--tools backupfs,restic]

To measure a committed state while the working tree is being edited, clone it and put the clone
first on the path: `git clone -q REPO /var/tmp/src && PYTHONPATH=/var/tmp/src python3 tools/bench_remote.py`
(the results name the commit and directory backupfs was imported from).

Results: a table per section on stdout (ratios are backupfs/restic: for speeds above 1x means
backupfs is faster, for seconds, sizes and memory below 1x means backupfs is better), plus
WORK/results/bench-remote-<time>.json and .md. A default run takes about 7 minutes on a busy
2-core machine and needs ~0.5 GiB of disk under --work and ~1.5 GiB of memory for moto.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
import boto3
from benchlib.adapters import Backupfs, Restic, Tool
from benchlib.core import Bench
from benchlib.corpus import Corpus, MiB, TreeInfo, evolve_step
from benchlib.mounting import Step, mount_session, start_mount, stop_mount
from benchlib.options import add_common_arguments, check_common_arguments
from benchlib.options import parse_args as bench_parse_args
from benchlib.report import Section, section_markdown
from benchlib.runner import Run, log, run_cmd
from support.delayproxy import DelayProxy
from support.servers import MotoServer, RGWServer, SSHDServer

TOOLS = ("backupfs", "restic")
SECTIONS = ("prune", "mount", "restore")
STORES = ("sftp", "s3", "rgw")
# Tree sizes at --scale 1, as factors of tools/benchlib/corpus.py's sizes (see the module docstring).
CORPUS_SCALE = {"evolve": 0.25, "mixed": 0.125, "small": 0.025}
REQUEST_RE = re.compile(r'"([A-Z]+) /([^/ ?]+)')  # werkzeug's log line: "GET /bucket/key HTTP/1.1"
LARGE_REL = Path("big") / "large-1g.bin"  # corpus.gen_mixed's large file (128 MiB x scale here)


def s3_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the moto server's credentials and without settings that would override them."""
    out = {k: v for k, v in env.items() if k not in MotoServer.unset_env}
    out.update(MotoServer.env)
    return out


class S3Backupfs(Backupfs):
    def env(self) -> dict[str, str]:
        e = s3_env(super().env())
        e["BACKUPFS_CACHE_DIR"] = str(self.work / "cache" / self.name)  # what --cache-dir sets
        return e


class S3Restic(Restic):
    def env(self) -> dict[str, str]:
        return s3_env(super().env())  # RESTIC_CACHE_DIR is WORK/cache/restic (Restic.env)


def clear_mountpoint(mnt: Path) -> None:
    """Lazily unmount a mount left on `mnt` by a mount process that died: os.path.ismount() (which
    bench.unmount checks) is False for such a dead FUSE mount, since stat() fails with ENOTCONN."""
    with open("/proc/mounts", encoding="utf-8", errors="surrogateescape") as f:
        mounted = any(len(x) > 1 and x[1] == str(mnt) for x in (line.split() for line in f))
    if mounted:
        log(f"  {mnt} was still mounted (a dead mount process?): umount -l")
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)


def placed(tool: Tool, args: list[str], env: dict[str, str]) -> Tool:
    """`tool` with `args` after `-r REPO` in every command and `env` added to its environment:
    the same tool against one server (an ssh command, S3 credentials)."""
    out = copy.copy(tool)
    base_env = tool.env

    def wrap(method: Any) -> Any:
        def build(*a: Any) -> Any:
            result = method(*a)
            if isinstance(result, tuple):
                return (result[0][:3] + args + result[0][3:], *result[1:])
            return result[:3] + args + result[3:]

        return build

    for name in ("init", "backup", "restore", "mount"):
        setattr(out, name, wrap(getattr(tool, name)))
    out.env = lambda: {**s3_env(base_env()), **env}  # type: ignore[method-assign]
    return out


def transfer_of(run: Run) -> dict[str, int]:
    """backupfs's own count (--json summary's "transfer"), or {} for a tool without one."""
    for line in reversed(run.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict) and "transfer" in obj:
                return dict(obj["transfer"])
    return {}


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def per(amount: float, run_s: float | None) -> float | None:
    return amount / run_s if run_s else None


class RemoteBench(Bench):
    """tools/bench.py's Bench with every repository in a bucket of one moto server."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.server = MotoServer(self.work)
        # The same tools Bench made (with its settings), talking to the S3 server.
        s3_class: dict[str, type[Tool]] = {"backupfs": S3Backupfs, "restic": S3Restic}
        tools = []
        for tool in self.tools:
            s3_tool = s3_class[tool.name](tool.name, tool.exe, tool.work)
            vars(s3_tool).update(vars(tool))
            s3_tool.settings += f"; local cache in WORK/cache/{tool.name}"
            tools.append(s3_tool)
        self.tools = tools
        self.stamp = f"remote-{self.stamp}"
        self.corpora = {name: Corpus(self.work, args.seed, args.scale * f) for name, f in CORPUS_SCALE.items()}
        self.s3: Any = None

    # -- the server and its buckets

    def bucket(self, tool: Tool) -> str:
        return f"bench-{tool.name}"

    def repo(self, tool: Tool, kind: str = "mount") -> Path:
        # bench.py's command builders only str() the repository, so a URL passes through them
        # unchanged (Path() would collapse its "//").
        kind = "mount" if kind == "main" else kind
        return cast(Path, f"s3:{self.server.endpoint}/{self.bucket(tool)}/{kind}")

    def fresh_repo(self, tool: Tool, kind: str) -> Path:
        repo = self.repo(tool, kind)
        self.empty_prefix(tool, kind)
        r = run_cmd(tool.init(repo), tool.env(), timeout=600)
        if not r.ok:
            raise RuntimeError(f"{tool.name} init failed: {r.error()}")
        return repo

    def start_server(self) -> None:
        log(f"starting moto S3 server on port {self.server.port}")
        # moto spools objects above ~5 MiB to temporary files, which dropping the page cache would then
        # make it read from disk: keep every object in its memory, the same for both tools' pack sizes
        os.environ["MOTO_S3_DEFAULT_KEY_BUFFER_SIZE"] = str(256 * MiB)
        self.server.start()
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.server.endpoint,
            region_name=MotoServer.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=MotoServer.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=MotoServer.env["AWS_SECRET_ACCESS_KEY"],
        )
        for tool in self.tools:
            self.s3.create_bucket(Bucket=self.bucket(tool))

    def objects(self, tool: Tool, kind: str) -> list[tuple[str, int]]:
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket(tool), Prefix=f"{kind}/"):
            out += [(o["Key"], int(o["Size"])) for o in page.get("Contents", [])]
        return out

    def bucket_mib(self, tool: Tool, kind: str) -> tuple[float, int]:
        """(MiB, objects) of the repository `kind` in the tool's bucket."""
        objs = self.objects(tool, kind)
        return sum(size for _, size in objs) / MiB, len(objs)

    def empty_prefix(self, tool: Tool, kind: str) -> None:
        for key, _ in self.objects(tool, kind):
            self.s3.delete_object(Bucket=self.bucket(tool), Key=key)

    def server_mark(self) -> tuple[int, float]:
        """Where the server's request log ends and how much CPU the server used, now."""
        time.sleep(0.05)  # let the server write the log lines of the requests just answered
        return self.server.log_path.stat().st_size, self.server_cpu_s()

    def server_cpu_s(self) -> float:
        proc = self.server._proc  # the moto process (MotoServer exposes no pid)
        if proc is None:
            return 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return 0.0

    def server_since(self, mark: tuple[int, float], tool: Tool) -> dict[str, Any]:
        """S3 requests to the tool's bucket (by method) and moto's CPU seconds since `mark`."""
        offset, cpu = self.server_mark()
        with open(self.server.log_path, "rb") as f:
            f.seek(mark[0])
            text = f.read(offset - mark[0]).decode(errors="replace")
        methods: dict[str, int] = {}
        for m in REQUEST_RE.finditer(text):
            if m.group(2) == self.bucket(tool):
                methods[m.group(1)] = methods.get(m.group(1), 0) + 1
        return {"requests": sum(methods.values()), "by_method": methods, "server_cpu_s": cpu - mark[1]}

    def server_rows(self, sec: Section, tool: Tool, label: str, used: dict[str, Any]) -> None:
        sec.put(f"{label}: S3 requests", "requests", "lower", tool.name, used["requests"])
        sec.put(f"{label}: moto server CPU", "s", "lower", tool.name, used["server_cpu_s"])

    def wipe_cache(self, tool: Tool) -> None:
        shutil.rmtree(self.work / "cache" / tool.name, ignore_errors=True)

    def backup_rows(self, sec: Section, tool: Tool, label: str, info: TreeInfo, r: Run, small: bool) -> None:
        if small:
            sec.put(f"{label}", "files/s", "higher", tool.name, info.files / r.wall_s)
        else:
            sec.put(f"{label}", "MiB/s", "higher", tool.name, info.bytes / MiB / r.wall_s)
        sec.put(f"{label}", "s", "lower", tool.name, r.wall_s)
        sec.put(f"{label}: CPU user+sys", "s", "lower", tool.name, r.cpu_s)
        sec.put(f"{label}: peak RSS", "MiB", "lower", tool.name, r.rss_mib)

    # -- sections

    def sec_prune(self, sec: Section) -> None:
        steps, keep = self.args.prune_steps, self.args.keep_last
        corpus = self.corpora["evolve"]
        info = corpus.ensure("evolve", log)
        root = info.root
        self.corpus_meta({"evolve": info})
        repos = {t.name: self.fresh_repo(t, "prune") for t in self.tools}
        incremental: dict[str, list[float]] = {t.name: [] for t in self.tools}
        last: dict[str, float] = {}
        failed: set[str] = set()
        log(
            f"prune: {steps} snapshots of the evolving tree ({info.files} files, {info.bytes / MiB:.0f} MiB), "
            "~5 % changed per step"
        )
        for step in range(steps):
            if step:
                evolve_step(root, step, 0.05, corpus.src)
                corpus.mark_changed("evolve")
            for tool in self.tools:
                if tool.name in failed:
                    continue
                cmd = tool.backup(repos[tool.name], root, f"evolve-{step:02d}")
                # the first backup is measured like bench.py's (cold caches); the others as they come
                if step == 0:
                    mark = self.server_mark()
                    r = self.measure(tool, cmd)
                    used = self.server_since(mark, tool)
                else:
                    self.load_sample()
                    r = run_cmd(cmd, tool.env(), timeout=self.timeout)
                last[tool.name] = r.wall_s
                if not r.ok:
                    failed.add(tool.name)
                    sec.notes.append(f"{tool.name}: backup {step} failed: {r.error()}")
                    continue
                if step == 0:
                    self.backup_rows(sec, tool, "first backup of the evolving tree", info, r, small=False)
                    self.server_rows(sec, tool, "first backup of the evolving tree", used)
                    sec.raw.append({"tool": tool.name, "phase": "first backup", **r.brief(), **used})
                else:
                    incremental[tool.name].append(r.wall_s)
            log(f"  step {step + 1}/{steps}: " + ", ".join(f"{n} {v:.2f} s" for n, v in last.items()))
        for tool in self.tools:
            sec.put("mean incremental backup (~5 % changed)", "s", "lower", tool.name, mean(incremental[tool.name]))
        # forget + prune, interleaved: each tool's whole phase runs alone on the machine
        after: dict[str, tuple[float, int]] = {}
        for tool in self.tools:
            if tool.name in failed:
                continue
            before_mib, before_n = self.bucket_mib(tool, "prune")
            sec.put("repository size before", "MiB", "lower", tool.name, before_mib)
            sec.put("objects in the bucket before", "objects", "lower", tool.name, before_n)
            runs: list[Run] = []
            mark = self.server_mark()
            for cmd in tool.forget_prune(repos[tool.name], keep):
                runs.append(self.measure(tool, cmd))
                if not runs[-1].ok:
                    break
            used = self.server_since(mark, tool)
            sec.raw.append({"tool": tool.name, "phase": "forget --prune", **runs[-1].brief(), **used})
            if not all(r.ok for r in runs):
                failed.add(tool.name)
                sec.notes.append(f"{tool.name}: forget --prune FAILED: {runs[-1].error()}")
                sec.put("forget + prune", "s", "lower", tool.name, None, "failed")
                continue
            sec.put("forget + prune", "s", "lower", tool.name, sum(r.wall_s for r in runs))
            sec.put("forget + prune: CPU user+sys", "s", "lower", tool.name, sum(r.cpu_s for r in runs))
            sec.put("forget + prune: peak RSS", "MiB", "lower", tool.name, max(r.rss_mib for r in runs))
            self.server_rows(sec, tool, "forget + prune", used)
            after[tool.name] = self.bucket_mib(tool, "prune")
        for tool in self.tools:
            if tool.name not in after:
                continue
            sec.put("repository size after", "MiB", "lower", tool.name, after[tool.name][0])
            sec.put("objects in the bucket after", "objects", "lower", tool.name, after[tool.name][1])
        for tool in self.tools:
            if tool.name not in after:
                continue
            self.load_sample()
            chk = run_cmd(tool.check(repos[tool.name], read_data=False), tool.env(), timeout=self.timeout)
            sec.raw.append({"tool": tool.name, "phase": "check after prune", **chk.brief()})
            sec.put("check after prune", "s", "lower", tool.name, chk.wall_s, "passed" if chk.ok else "FAILED")
            if not chk.ok:
                sec.notes.append(f"{tool.name}: check after prune FAILED: {chk.error()}")
            left = tool.count_snapshots(repos[tool.name])
            if left != min(keep, steps):
                sec.notes.append(f"{tool.name}: {left} snapshots left after forget, expected {min(keep, steps)}")
        sec.notes.insert(
            0,
            f"evolving tree: {info.files} files, {info.bytes / MiB:.0f} MiB at the start; each step rewrites, deletes "
            f"or replaces ~5 % of the files; both run `forget --keep-last {keep} --prune`, then `check`; sizes are "
            "sums of the object sizes under the repository's prefix",
        )

    def sec_mount(self, sec: Section) -> None:
        trees = {name: self.corpora[name].ensure(name, log) for name in ("mixed", "small")}
        self.corpus_meta(trees)
        mixed, small = trees["mixed"].root, trees["small"].root
        large_mib = (mixed / LARGE_REL).stat().st_size / MiB
        # first backups into S3: measured (the mount needs them anyway)
        bsec = Section("backup", "First backup into S3")
        self.sections.insert(self.sections.index(sec), bsec)
        snaps: dict[str, dict[str, str]] = {t.name: {} for t in self.tools}
        for tool in self.tools:
            self.fresh_repo(tool, "mount")
        for name, info in trees.items():
            log(f"backup into S3: {name} ({info.files} files, {info.bytes / MiB:.0f} MiB)")
            for tool in self.tools:
                mark = self.server_mark()
                r = self.measure(tool, tool.backup(self.repo(tool), info.root, f"{name}-1"))
                used = self.server_since(mark, tool)
                bsec.raw.append({"tool": tool.name, "tree": name, **r.brief(), **used})
                if not r.ok:
                    bsec.notes.append(f"{tool.name}: backup of {name} FAILED: {r.error()}")
                    continue
                snaps[tool.name][name] = tool.snapshot_id(r, f"{name}-1")
                label = "first backup, small files" if name == "small" else "first backup, mixed tree"
                self.backup_rows(bsec, tool, label, info, r, small=name == "small")
                self.server_rows(bsec, tool, label, used)
        for tool in self.tools:
            mib, n = self.bucket_mib(tool, "mount")
            bsec.put("repository size after both", "MiB", "lower", tool.name, mib)
            bsec.put("objects in the bucket", "objects", "lower", tool.name, n)
        bsec.notes.append(
            f"mixed tree {trees['mixed'].files} files, {trees['mixed'].bytes / MiB:.0f} MiB; small-file tree "
            f"{trees['small'].files} files, {trees['small'].bytes / MiB:.0f} MiB; page caches dropped before each"
        )
        # two mounts per tool: an empty local cache, then the cache the first one filled
        sessions = (("1st mount, empty cache", True), ("2nd mount, warm cache", False))
        for label, cold in sessions:
            for tool in self.tools:
                if set(snaps[tool.name]) != {"mixed", "small"}:
                    continue
                log(f"mount: {tool.name}, {label}")
                if cold:
                    self.wipe_cache(tool)
                mnt = self.work / "mnt" / tool.name
                clear_mountpoint(mnt)
                mark = self.server_mark()
                try:
                    res = self.mount_one(tool, mnt, snaps[tool.name], mixed, small)
                except Exception as e:  # keep going with the other tool
                    sec.notes.append(f"{tool.name}, {label}: mount benchmark FAILED: {e}")
                    continue
                used = self.server_since(mark, tool)
                sec.raw.append({"tool": tool.name, "session": label, **res, **used})
                self.server_rows(sec, tool, f"whole mount session, {label}", used)
                g = res.get
                sec.put(f"first ls of a snapshot folder, {label}", "s", "lower", tool.name, g("first_ls_s"))
                sec.put(f"mount point live, {label}", "s", "lower", tool.name, g("mounted_s"))
                sec.put(f"cp of the large file, {label}", "MiB/s", "higher", tool.name, per(large_mib, g("cp_s")))
                sec.put(
                    f"tar of the small-file tree, {label}",
                    "files/s",
                    "higher",
                    tool.name,
                    per(trees["small"].files, g("tar_small_s")),
                )
                sec.put(
                    f"tar of the mixed tree, {label}",
                    "MiB/s",
                    "higher",
                    tool.name,
                    per(trees["mixed"].bytes / MiB, g("tar_mixed_s")),
                )
                sec.put(f"mount process peak RSS (VmHWM), {label}", "MiB", "lower", tool.name, g("vmhwm_mib"))
                for err in res.get("errors", []):
                    sec.notes.append(f"{tool.name}, {label}: {err}")
        # group the rows by metric, so the two sessions of one metric are next to each other
        order = ("first ls", "mount point", "cp ", "tar of the small", "tar of the mixed", "mount process", "whole")
        sec.rows.sort(key=lambda r: next((i for i, p in enumerate(order) if r.metric.startswith(p)), len(order)))
        for tool in self.tools:
            cache = self.work / "cache" / tool.name
            size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) if cache.exists() else 0
            sec.notes.append(f"{tool.name}: local cache after the mounts {size / MiB:.1f} MiB")
        sec.notes.append(
            "first ls: from starting the mount process until listing ids/<short id>/<small tree path> succeeds; "
            "the empty-cache mount is the first access from a new machine (backupfs and restic then fetch the "
            "index, snapshots and tree packs from S3), the warm-cache one a later mount"
        )
        sec.notes.append(
            f"cp: `cp FILE /dev/null` of a {large_mib:.0f} MiB file; tar: `tar cf - -C DIR . | cat >/dev/null`; "
            "neither tool caches file contents locally, so cp and tar fetch from S3 in both mounts; page caches "
            "dropped before each"
        )

    def mount_one(self, tool: Tool, mnt: Path, snaps: dict[str, str], mixed: Path, small: Path) -> dict[str, Any]:
        """One mount session: first ls of the small tree, cp of the large file, tar of both trees."""
        small_in = tool.path_in_mount(mnt, snaps["small"], small)
        mixed_in = tool.path_in_mount(mnt, snaps["mixed"], mixed)
        tar = 'tar cf - -C "$1" . | cat >/dev/null'
        steps = [
            Step("cp", ["cp", str(mixed_in / LARGE_REL), "/dev/null"]),
            Step("tar_small", ["bash", "-c", tar, "tar", str(small_in)]),
            Step("tar_mixed", ["bash", "-c", tar, "tar", str(mixed_in)]),
        ]
        return mount_session(self, tool, self.repo(tool), mnt, small_in, steps)

    # -- restore and mount from SFTP, S3 and Ceph RGW, with and without added latency (issue 15)

    def store_url(self, store: str, tool: Tool, port: int) -> tuple[str, list[str]]:
        """(repository URL, extra arguments) of `tool`'s repository on `store`, reached at `port`."""
        if store == "sftp":
            sshd = self.sshd
            if tool.name == "backupfs":
                opts = ["-o", f"sftp_key={sshd.client_key}", "-o", f"sftp_known_hosts={sshd.known_hosts}"]
                return f"sftp://{sshd.user}@127.0.0.1:{port}/{sshd.root / tool.name}", opts
            ssh = (
                f"ssh -i {sshd.client_key} -o UserKnownHostsFile={sshd.known_hosts} -o StrictHostKeyChecking=yes "
                f"-o BatchMode=yes -p {port} {sshd.user}@127.0.0.1 -s sftp"
            )
            return f"sftp:{sshd.user}@127.0.0.1:{sshd.root / tool.name}", ["-o", f"sftp.command={ssh}"]
        if store == "local":
            return str(self.sshd.root / tool.name), []
        return f"s3:http://127.0.0.1:{port}/{self.bucket(tool)}/restore", []

    def store_port(self, store: str) -> int:
        return {"sftp": self.sshd.port, "s3": self.server.port, "rgw": self.rgw.port if self.rgw else 0}.get(store, 0)

    def start_stores(self, sec: Section) -> list[str]:
        self.sshd = SSHDServer(self.work / "sshd-restore")
        shutil.rmtree(self.sshd.root, ignore_errors=True)
        self.sshd.root.mkdir(parents=True)
        self.sshd.start()
        stores = ["sftp", "s3"]
        self.rgw: RGWServer | None = None
        if "rgw" in self.args.stores:
            try:
                log("starting a single-node Ceph cluster with RGW (tools/ceph_rgw.py)")
                rgw = RGWServer(self.work / "rgw")
                rgw.__enter__()
                self.rgw = rgw
                client = boto3.client(
                    "s3",
                    endpoint_url=rgw.endpoint,
                    region_name=MotoServer.env["AWS_DEFAULT_REGION"],
                    aws_access_key_id=MotoServer.env["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=MotoServer.env["AWS_SECRET_ACCESS_KEY"],
                )
                for tool in self.tools:
                    with contextlib.suppress(Exception):
                        client.create_bucket(Bucket=self.bucket(tool))
                stores.append("rgw")
            except Exception as e:  # no Ceph here: the other stores still run
                sec.notes.append(f"Ceph RGW not measured: {type(e).__name__}: {e}")
        return [st for st in stores if st in self.args.stores]

    def stop_stores(self) -> None:
        self.sshd.stop()
        if self.rgw is not None:
            self.rgw.__exit__(None, None, None)

    def sec_restore(self, sec: Section) -> None:
        info = self.corpora["mixed"].ensure("mixed", log)
        self.corpus_meta({"mixed": info})
        stores = self.start_stores(sec)
        reps = self.args.remote_repeat
        delays = [0.0, *([self.args.latency_ms] if self.args.latency_ms else [])]
        snaps: dict[tuple[str, str], str] = {}
        try:
            for store in stores:
                for tool in self.tools:
                    url, extra = self.store_url(store, tool, self.store_port(store))
                    placed_tool = placed(tool, extra, {})
                    if store == "sftp":
                        shutil.rmtree(self.sshd.root / tool.name, ignore_errors=True)
                    else:
                        self.empty_prefix_at(store, tool)
                    r = run_cmd(placed_tool.init(cast(Path, url)), placed_tool.env(), timeout=600)
                    if not r.ok:
                        sec.notes.append(f"{tool.name} init on {store} failed: {r.error()}")
                        continue
                    log(f"backup into {store}: {tool.name}")
                    r = self.measure(placed_tool, placed_tool.backup(cast(Path, url), info.root, "restore"))
                    if not r.ok:
                        sec.notes.append(f"{tool.name} backup into {store} failed: {r.error()}")
                        continue
                    snaps[(store, tool.name)] = tool.snapshot_id(r, "restore")
                    sec.put(f"backup into {store}", "s", "lower", tool.name, r.wall_s)
                    up = transfer_of(r)
                    if up:
                        sec.put(f"backup into {store}: MiB up", "MiB", "lower", tool.name, up["bytes_up"] / MiB)
                        sec.put(f"backup into {store}: requests", "requests", "lower", tool.name, up["requests"])
            places = [("local", 0.0)] + [(st, d) for d in delays for st in stores]
            for store, delay in places:
                for tool in self.tools:
                    snap = snaps.get(("sftp" if store == "local" else store, tool.name))
                    if snap is not None:
                        self.restore_rows(sec, tool, store, delay, snap, info, reps)
            if not self.args.no_mount:
                for store, delay in places[1:]:
                    for tool in self.tools:
                        snap = snaps.get((store, tool.name))
                        if snap is not None:
                            self.mount_rows(sec, tool, store, delay, snap, info)
        finally:
            self.stop_stores()
        sec.notes.append(
            f"mixed tree {info.files} files, {info.bytes / MiB:.0f} MiB; local = the SFTP repository's own "
            "directory read as a local repository; +N ms = through tools/support/delayproxy.py, N ms each way; "
            f"times are medians of {reps} (range beside them), caches (tools' and pages) emptied before each"
        )
        sec.notes.append(
            "MiB down/up: backupfs's own count (--json transfer); through the proxy also what crossed it, "
            "for both tools (proxy MiB down). requests: backupfs's Backend calls (each attempt)"
        )

    def empty_prefix_at(self, store: str, tool: Tool) -> None:
        if store == "s3":
            self.empty_prefix(tool, "restore")
        elif store == "rgw" and self.rgw is not None:
            client = boto3.client(
                "s3",
                endpoint_url=self.rgw.endpoint,
                region_name=MotoServer.env["AWS_DEFAULT_REGION"],
                aws_access_key_id=MotoServer.env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=MotoServer.env["AWS_SECRET_ACCESS_KEY"],
            )
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket(tool), Prefix="restore/"):
                for o in page.get("Contents", []):
                    client.delete_object(Bucket=self.bucket(tool), Key=o["Key"])

    @contextlib.contextmanager
    def reach(self, store: str, tool: Tool, delay: float) -> Any:
        """(tool placed on the store, URL, proxy or None) for one measured command."""
        proxy = DelayProxy(self.store_port(store), delay / 1000) if delay else None
        try:
            port = proxy.port if proxy is not None else self.store_port(store)
            if proxy is not None and store == "sftp":
                self.sshd.trust_port(port)
            url, extra = self.store_url(store, tool, port)
            yield placed(tool, extra, {}), url, proxy
        finally:
            if proxy is not None:
                proxy.close()

    def restore_rows(
        self, sec: Section, tool: Tool, store: str, delay: float, snap: str, info: TreeInfo, reps: int
    ) -> None:
        label = f"restore from {store}" + (f" +{delay:.0f} ms" if delay else "")
        log(f"{label}: {tool.name}")
        times: list[float] = []
        transfers: list[dict[str, int]] = []
        proxied: list[dict[str, int]] = []
        for _ in range(reps):
            target = self.work / "restore-target"
            shutil.rmtree(target, ignore_errors=True)
            self.wipe_cache(tool)
            with self.reach(store, tool, delay) as (placed_tool, url, proxy):
                cmd, cwd = placed_tool.restore(cast(Path, url), snap, target)
                if tool.name == "backupfs":
                    cmd = [c for c in cmd if c != "-q"]
                    cmd.insert(3, "--json")
                r = self.measure(placed_tool, cmd, cwd)
                if proxy is not None:
                    proxied.append(proxy.counts())
            if not r.ok:
                sec.notes.append(f"{tool.name}, {label}: FAILED: {r.error()}")
                return
            times.append(r.wall_s)
            transfers.append(transfer_of(r))
        median = statistics.median(times)
        sec.put(label, "s", "lower", tool.name, median, note=spread(times))
        sec.put(f"{label}: MiB/s", "MiB/s", "higher", tool.name, info.bytes / MiB / median)
        sec.raw.append({"tool": tool.name, "what": label, "times": times, "transfer": transfers, "proxy": proxied})
        if transfers and transfers[0]:
            sec.put(
                f"{label}: requests",
                "requests",
                "lower",
                tool.name,
                statistics.median(t["requests"] for t in transfers),
            )
            sec.put(f"{label}: MiB down", "MiB", "lower", tool.name, transfers[0]["bytes_down"] / MiB)
        if proxied:
            sec.put(f"{label}: proxy MiB down", "MiB", "lower", tool.name, proxied[0]["bytes_down"] / MiB)
            sec.put(f"{label}: proxy MiB up", "MiB", "lower", tool.name, proxied[0]["bytes_up"] / MiB)

    def mount_rows(self, sec: Section, tool: Tool, store: str, delay: float, snap: str, info: TreeInfo) -> None:
        label = f"mount of {store}" + (f" +{delay:.0f} ms" if delay else "")
        log(f"{label}: {tool.name}")
        mnt = self.work / "mnt" / tool.name
        clear_mountpoint(mnt)
        firsts: list[float] = []
        tars: list[float] = []
        errors: list[str] = []
        for _ in range(self.args.remote_repeat):
            self.wipe_cache(tool)
            self.caches.drop()
            with self.reach(store, tool, delay) as (placed_tool, url, _proxy):
                inside = tool.path_in_mount(mnt, snap, info.root)
                try:
                    proc, _mounted, first = start_mount(
                        self, placed_tool, cast(Path, url), mnt, inside, mnt.parent / "m.log"
                    )
                except RuntimeError as e:
                    sec.notes.append(f"{tool.name}, {label}: mount FAILED: {e}")
                    return
                try:
                    self.caches.drop()
                    r = run_cmd(
                        ["bash", "-c", 'tar cf - -C "$1" . | cat >/dev/null', "tar", str(inside)],
                        {},
                        timeout=self.timeout,
                    )
                finally:
                    stop_mount(proc, mnt, errors)
            firsts.append(first)
            if r.ok:
                tars.append(r.wall_s)
            else:
                errors.append(f"tar failed: {r.error()}")
        sec.put(f"{label}: first ls", "s", "lower", tool.name, statistics.median(firsts), note=spread(firsts))
        if tars:
            median = statistics.median(tars)
            sec.put(f"{label}: tar of the tree", "s", "lower", tool.name, median, note=spread(tars))
            sec.put(f"{label}: tar MiB/s", "MiB/s", "higher", tool.name, info.bytes / MiB / median)
        for problem in errors:
            sec.notes.append(f"{tool.name}, {label}: {problem}")

    # -- driver

    def markdown(self) -> str:
        lines = super().markdown().split("\n")
        lines.insert(2, f"- S3 server: {self.meta.get('s3_server', '?')}")
        return "\n".join(lines)

    def backupfs_source(self) -> None:
        """Record which backupfs the runs import (PYTHONPATH may point at another checkout) and its commit."""
        tool = next((t for t in self.tools if t.name == "backupfs"), None)
        if tool is None:
            return
        where = "import backupfs, os; print(os.path.dirname(os.path.dirname(os.path.abspath(backupfs.__file__))))"
        r = run_cmd([sys.executable, "-c", where], tool.env(), cwd=Path("/"), timeout=60)
        src = r.stdout.strip()
        if not r.ok or not src:
            return
        rev = subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", src, "status", "--porcelain", "--", "backupfs"], capture_output=True, text=True
        )
        commit = rev.stdout.strip() or "not a git checkout"
        if dirty.stdout.strip():
            commit += " with uncommitted changes in backupfs/"
        self.meta["backupfs_commit"] = f"{commit} (imported from {src})"

    def run(self) -> int:
        self.collect_meta()
        self.backupfs_source()
        moto_version = "?"
        with contextlib.suppress(ImportError):
            import moto

            moto_version = moto.__version__
        self.meta["s3_server"] = (
            f"moto {moto_version} (`python -m moto.server`, objects in its memory) on 127.0.0.1, one bucket per "
            "tool, path-style URLs"
        )
        titles = {
            "prune": f"forget + prune on S3 ({self.args.prune_steps} snapshots, keep last {self.args.keep_last})",
            "mount": "Mount of an S3 repository",
            "restore": "Restore and mount from SFTP, S3 (moto) and Ceph RGW, with and without added latency",
        }
        funcs = {"prune": self.sec_prune, "mount": self.sec_mount, "restore": self.sec_restore}
        t_all = time.perf_counter()
        rc = 0
        printed = 0
        try:
            self.start_server()
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
                for s in self.sections[printed:]:  # the mount section adds the backup section before itself
                    print(section_markdown(s, self.names), flush=True)
                printed = len(self.sections)
                self.write_results()
        finally:
            self.server.stop()
        self.meta["total_s"] = round(time.perf_counter() - t_all, 1)
        jpath, mpath = self.write_results()
        print(self.markdown())
        log(f"done in {self.meta['total_s']:.0f} s; results: {jpath} and {mpath}")
        return rc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(
        p,
        work=Path("/var/tmp/backupfs-bench-remote"),
        scale_help="corpus size factor: 1 = ~100 MiB evolving tree, ~270 MiB mixed tree, 2,500 small files",
        sections=SECTIONS,
        tools=TOOLS,
        timeout=1800,
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        default=20.0,
        help="added latency each way for the restore section's second run (0: none)",
    )
    p.add_argument("--stores", default=",".join(STORES), help="restore section: stores to measure (sftp,s3,rgw)")
    p.add_argument("--remote-repeat", type=int, default=3, help="restore section: runs of each measurement (median)")
    p.add_argument("--no-mount", action="store_true", help="restore section: leave out the mount rows")
    args = p.parse_args(argv)
    args.stores = [st for st in args.stores.split(",") if st]
    # Bench's constructor reads bench.py's options: start from their defaults
    full = bench_parse_args([])
    vars(full).update(vars(args))
    full.repeat = 1  # one run of each measurement here
    check_common_arguments(p, args, sections=SECTIONS, tools=TOOLS, max_scale=8)
    return full


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = RemoteBench(args)
    if not bench.tools:
        log("no tool available")
        return 1
    return bench.run()


if __name__ == "__main__":
    sys.exit(main())
