"""`backupfs cat SNAPSHOT PATH`: stream one file of a snapshot to stdout."""

from __future__ import annotations

import argparse
import sys

from backupfs.cli._common import open_repository
from backupfs.errors import IntegrityError, UsageError
from backupfs.format.pack import DATA
from backupfs.format.tree import FILE
from backupfs.ops.treeview import lookup


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cat", help="print one file of a snapshot to standard output")
    p.add_argument("snapshot", help="snapshot id, prefix or 'latest'")
    p.add_argument("path", help="absolute path of the file inside the snapshot")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.json:
        raise UsageError("cat writes the file itself to standard output: use `dump SNAPSHOT PATH --target FILE --json`")
    out = sys.stdout.buffer
    with open_repository(args, lock="shared") as repo:
        _sid, snap = repo.find_snapshot(args.snapshot)
        node = lookup(repo, snap.tree, args.path)
        if node.type != FILE:
            raise UsageError(f"{args.path} is not a regular file")
        if node.defect is not None:
            raise IntegrityError(f"{args.path}: cannot be read: {node.defect}")
        content = node.content or []
        pos = 0
        for j, (offset, blob_id) in enumerate(content):
            if offset > pos:
                _zeros(out, offset - pos)  # a hole
            data = repo.load_blob(DATA, blob_id)
            # a chunk gives the bytes up to the next one's offset, or the size (format.md 9)
            end = min(offset + len(data), content[j + 1][0] if j + 1 < len(content) else node.size)
            out.write(memoryview(data)[: end - offset])
            pos = end
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
