"""`backupfs restore SNAPSHOT[:PATH] --target DIR`: write a snapshot back to disk."""

from __future__ import annotations

import argparse
import time

from backupfs.cli._common import Progress, open_repository
from backupfs.cli._output import err, human_size, print_json
from backupfs.errors import IntegrityError, UsageError
from backupfs.format.tree import DIR
from backupfs.ops.restore import Restorer, RestoreStats
from backupfs.ops.treeview import lookup


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("restore", help="restore a snapshot into a directory")
    p.add_argument("snapshot", help="snapshot id, prefix or 'latest'; SNAP:PATH restores a sub-folder")
    p.add_argument("-t", "--target", required=True, help="directory to restore into")
    p.add_argument("-i", "--include", action="append", default=[], metavar="PATTERN", help="restore only these")
    p.add_argument("-e", "--exclude", action="append", default=[], metavar="PATTERN", help="skip these")
    p.add_argument("--verify", action="store_true", help="read restored files back and check their content")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ref, _, sub = args.snapshot.partition(":")
    progress = Progress(not args.quiet and not args.json)
    start = time.monotonic()
    with open_repository(args, lock="shared") as repo:
        sid, snap = repo.find_snapshot(ref)
        tree = snap.tree
        if sub:
            node = lookup(repo, tree, sub)
            if node.type != DIR or node.subtree is None:
                raise UsageError(f"{sub} is not a directory in snapshot {sid[:8]}")
            tree = node.subtree

        def report(stats: RestoreStats) -> None:
            if progress.due():
                progress.show(f"{stats.files} files, {human_size(stats.bytes_written)} restored")

        restorer = Restorer(
            repo,
            tree,
            args.target,
            includes=args.include,
            excludes=args.exclude,
            verify=args.verify,
            progress=report if progress.enabled else None,
        )
        if not args.json and not args.quiet:
            err(f"restoring snapshot {sid[:8]} of {', '.join(snap.paths)} to {args.target}")
        stats = restorer.run()
    progress.done()
    for w in stats.warnings:
        err(f"warning: {w}")
    for e in stats.errors:
        err(f"error: {e}")
    elapsed = time.monotonic() - start
    if args.json:
        print_json(
            {
                "message_type": "summary",
                "files_restored": stats.files,
                "dirs_restored": stats.dirs,
                "bytes_restored": stats.bytes_written,
                "files_verified": stats.verified_files,
                "errors": len(stats.errors),
                "duration_seconds": round(elapsed, 3),
            }
        )
    elif not args.quiet:
        print(f"restored {stats.files} files, {stats.dirs} dirs, {human_size(stats.bytes_written)} in {elapsed:.2f}s")
        if args.verify:
            print(f"verified {stats.verified_files} files")
    if stats.errors:
        raise IntegrityError(f"restore finished with {len(stats.errors)} errors")
    return 0
