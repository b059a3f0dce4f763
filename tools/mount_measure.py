#!/usr/bin/env python3
"""Quick measurements of `backupfs mount` (not a test; tools/bench.py compares with restic/borg).

    python tools/mount_measure.py [--work DIR] [--big-mib 1024] [--small-files 20000] [--keep]

Reports: time from starting the mount process to the first `ls` of the snapshots folder and of a
snapshot's folder answering; MB/s of `cp` of one large file out of a fresh mount next to
`backupfs restore` of that file (both with the repository in the page cache); files/s of
`tar cf /dev/null DIR` over many small files (GNU tar then reads metadata only) and of
`tar cf - DIR | cat >/dev/null` (contents too); the mount process's RSS and peak RSS (VmHWM,
which includes the key derivation's 64 MiB at start). Needs root and /dev/fuse.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

PASSWORD = "measure"


def run(cmd: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, env=env, check=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def backupfs(env: dict[str, str], repo: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "backupfs", "-r", str(repo), *args]


def is_mounted(path: Path) -> bool:
    with open("/proc/mounts", encoding="utf-8", errors="surrogateescape") as f:
        return any(len(x) > 1 and x[1] == str(path) for x in (line.split() for line in f))


class Mounted:
    """A mount process started at construction; `t0` is when it was started."""

    def __init__(self, env: dict[str, str], repo: Path, mnt: Path, *extra: str) -> None:
        mnt.mkdir(parents=True, exist_ok=True)
        self.mnt = mnt
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [*backupfs(env, repo, "mount", str(mnt), "-q", *extra)], env=env, stderr=subprocess.PIPE
        )

    def wait_ls(self, rel: str = "snapshots") -> float:
        """Seconds from process start until listing `rel` answered."""
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"mount exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            if is_mounted(self.mnt):
                try:
                    os.listdir(self.mnt / rel)
                    return time.perf_counter() - self.t0
                except OSError:
                    pass
            time.sleep(0.002)

    def peak_rss_mib(self) -> float:
        return self._status_mib("VmHWM:")

    def rss_mib(self) -> float:
        return self._status_mib("VmRSS:")

    def _status_mib(self, field: str) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)


def make_data(src: Path, big_mib: int, small_files: int) -> None:
    big = src / "big"
    big.mkdir(parents=True)
    rnd = random.Random(1)
    with open(big / "large.bin", "wb") as f:
        for _ in range(big_mib):
            f.write(rnd.randbytes(1 << 20))
    small = src / "small"
    for i in range(small_files):
        d = small / f"d{i // 200:03d}"
        if i % 200 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}.txt").write_bytes(rnd.randbytes(rnd.randrange(100, 8000)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/backupfs-mount-measure"))
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--small-files", type=int, default=20_000)
    ap.add_argument("--keep", action="store_true", help="reuse the repository from an earlier run")
    args = ap.parse_args()
    work: Path = args.work
    repo, src = work / "repo", work / "src"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPFS_")}
    env.update(BACKUPFS_PASSWORD=PASSWORD, BACKUPFS_CACHE_DIR=str(work / "cache"))
    if not (args.keep and repo.exists()):
        shutil.rmtree(work, ignore_errors=True)
        make_data(src, args.big_mib, args.small_files)
        run(backupfs(env, repo, "init"), env)
        run(backupfs(env, repo, "backup", str(src)), env)
    rel_big = str(src / "big" / "large.bin").lstrip("/")
    size = (src / "big" / "large.bin").stat().st_size
    # warm the repository in the page cache once, then time a restore of the large file
    out = work / "restored"
    for _ in range(2):
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        proc = run(backupfs(env, repo, "restore", f"latest:{src / 'big'}", "--target", str(out), "--json"), env)
        wall_s = time.perf_counter() - t
        restore_s = json.loads(proc.stdout.splitlines()[-1])["duration_seconds"]
    print(
        f"restore of {size >> 20} MiB: {size / restore_s / 1e6:.0f} MB/s by its own clock "
        f"(from opening the repository: {restore_s:.2f} s; {wall_s:.2f} s with interpreter start-up)"
    )

    results: dict[str, float] = {}
    for run_no in range(2):
        m = Mounted(env, repo, work / "mnt")
        try:
            first = m.wait_ls()
            snap = os.listdir(m.mnt / "snapshots")[0]
            inside = m.wait_ls(f"snapshots/{snap}/{str(src).lstrip('/')}")
            big = m.mnt / "snapshots" / snap / rel_big
            target = work / "copied.bin"
            target.unlink(missing_ok=True)
            t = time.perf_counter()
            run(["cp", str(big), str(target)], env)
            cp_s = time.perf_counter() - t
            small = m.mnt / "snapshots" / snap / str(src / "small").lstrip("/")
            t = time.perf_counter()
            subprocess.run(["tar", "cf", "/dev/null", "-C", str(small), "."], check=True)
            tar_meta_s = time.perf_counter() - t
            rss_before_tar = m.rss_mib()
            t = time.perf_counter()
            subprocess.run(f"tar cf - -C '{small}' . | cat >/dev/null", shell=True, check=True)
            tar_s = time.perf_counter() - t
            rss, peak = m.rss_mib(), m.peak_rss_mib()
        finally:
            m.stop()
        results = {"first": first, "inside": inside, "cp": size / cp_s / 1e6, "tar": args.small_files / tar_s}
        print(
            f"run {run_no + 1}: first ls {first:.3f} s, ls inside a snapshot {inside:.3f} s, "
            f"cp {results['cp']:.0f} MB/s ({results['cp'] * restore_s * 1e6 / size:.0%} of restore), "
            f"tar cf /dev/null (metadata only) {args.small_files / tar_meta_s:.0f} files/s, "
            f"tar cf - | cat (contents) {results['tar']:.0f} files/s, "
            f"RSS {rss_before_tar:.0f} -> {rss:.0f} MiB across the tar, peak RSS {peak:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
