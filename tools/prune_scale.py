#!/usr/bin/env python3
"""Prune at scale: peak memory per blob on a synthetic repository of N blobs (issue 5).

Builds a repository through the Repository API (no file system walk): DIRS folders of 50 files of
10 small blobs each, ten snapshots over a sliding window of the folders, then forgets the five
oldest snapshots and runs `backupfs prune` under GNU time, printing wall time, CPU time, peak RSS
and bytes per blob.

    python3 tools/prune_scale.py --blobs 2000000 --work /var/tmp/prune-scale
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import time

from backupfs.backends.local import LocalBackend
from backupfs.format.pack import DATA
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, FILE, Node
from backupfs.repository.repo import Repository

FILES, BLOBS, SNAPS = 50, 10, 10
PASSWORD = "prune-scale"


def build(path: str, n_blobs: int, size: int) -> None:
    dirs = max(SNAPS, n_blobs // (FILES * BLOBS))
    window = dirs * 13 // 40 or 1
    step = max(1, (dirs - window) // (SNAPS - 1))
    shutil.rmtree(path, ignore_errors=True)
    repo = Repository.init(LocalBackend(path), PASSWORD.encode(), pack_size=4 << 20, kdf=(1, 8192))
    rng = random.Random(1)
    trees = []
    for _d in range(dirs):
        nodes = []
        for f in range(FILES):
            content = [(b * size, repo.save_blob(DATA, rng.randbytes(size))[0]) for b in range(BLOBS)]
            nodes.append(Node(name=b"f%03d" % f, type=FILE, mode=0o644, size=size * BLOBS, content=content))
        trees.append(repo.save_tree(nodes))
    for i in range(SNAPS):
        lo = min(i * step, dirs - window)
        kids = [Node(name=b"d%05d" % d, type=DIR, mode=0o755, subtree=trees[d]) for d in range(lo, lo + window)]
        root = repo.save_tree([Node(name=b"data", type=DIR, mode=0o755, subtree=repo.save_tree(kids))])
        repo.flush()
        repo.save_snapshot(Snapshot((1_700_000_000 + i * 86400) * 10**9, "h", "u", ["/data"], root))
    repo.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blobs", type=int, default=200_000)
    ap.add_argument("--blob-size", type=int, default=256)
    ap.add_argument("--work", default="/var/tmp/backupfs-prune-scale")
    args = ap.parse_args()
    repo = os.path.join(args.work, "repo")
    env = dict(os.environ, BACKUPFS_PASSWORD=PASSWORD, XDG_CACHE_HOME=os.path.join(args.work, "cache"))
    t = time.monotonic()
    build(repo, args.blobs, args.blob_size)
    print(f"built {args.blobs} blobs in {time.monotonic() - t:.1f} s")
    cli = [sys.executable, "-m", "backupfs", "-r", repo, "-q"]
    subprocess.run([*cli, "forget", "--keep-last", "5"], env=env, check=True, stdout=subprocess.DEVNULL)
    index_bytes = sum(e.stat().st_size for e in os.scandir(os.path.join(repo, "index")))
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%e %U %S %M", *cli, "prune"], env=env, check=True, capture_output=True, text=True
    )
    wall, user, sys_, rss_kib = re.findall(r"^([\d.]+) ([\d.]+) ([\d.]+) (\d+)$", proc.stderr, re.M)[-1]
    rss = int(rss_kib) * 1024
    print(f"prune: {float(wall):.1f} s wall, {float(user) + float(sys_):.1f} s CPU, peak RSS {rss / 2**20:.0f} MiB")
    print(f"index on disk {index_bytes / 2**20:.1f} MiB; peak RSS {rss / args.blobs:.0f} B per blob")
    return 0


if __name__ == "__main__":
    sys.exit(main())
