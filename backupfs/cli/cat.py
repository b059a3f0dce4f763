"""`backupfs cat SNAPSHOT PATH`: stream one file of a snapshot to stdout."""

from __future__ import annotations

import argparse
import sys

from backupfs.cli._common import open_repository
from backupfs.errors import UsageError
from backupfs.format.pack import DATA
from backupfs.format.tree import FILE
from backupfs.ops.treeview import lookup


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cat", help="print one file of a snapshot to standard output")
    p.add_argument("snapshot", help="snapshot id, prefix or 'latest'")
    p.add_argument("path", help="absolute path of the file inside the snapshot")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with open_repository(args, lock="shared") as repo:
        _sid, snap = repo.find_snapshot(args.snapshot)
        node = lookup(repo, snap.tree, args.path)
        if node.type != FILE:
            raise UsageError(f"{args.path} is not a regular file")
        pos = 0
        for offset, blob_id in node.content or ():
            if offset > pos:
                _zeros(out, offset - pos)  # a hole
            data = repo.load_blob(DATA, blob_id)
            out.write(data)
            pos = offset + len(data)
        if node.size > pos:
            _zeros(out, node.size - pos)
    out.flush()
    return 0


def _zeros(out: object, n: int) -> None:
    block = bytes(min(n, 1 << 20))
    while n > 0:
        k = min(n, len(block))
        out.write(block[:k])  # type: ignore[attr-defined]
        n -= k
