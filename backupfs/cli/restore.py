"""`backupfs restore SNAPSHOT[:PATH] --target DIR`: write a snapshot back to disk."""

from __future__ import annotations

import argparse
import os
import time

from backupfs.cli._common import open_repository
from backupfs.cli._output import err, human_size, print_json
from backupfs.cli._progress import Progress, restore_figures
from backupfs.cli.snapshots import summary_count
from backupfs.errors import IntegrityError, UsageError
from backupfs.format.tree import DIR
from backupfs.ops.restore import Restorer
from backupfs.ops.treeview import lookup


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("restore", help="restore a snapshot into a directory")
    p.add_argument("snapshot", help="snapshot id, prefix or 'latest'; SNAP:PATH restores a sub-folder")
    p.add_argument("-t", "--target", required=True, help="directory to restore into")
    p.add_argument("-i", "--include", action="append", default=[], metavar="PATTERN", help="restore only these")
    p.add_argument("-e", "--exclude", action="append", default=[], metavar="PATTERN", help="skip these")
    p.add_argument("--verify", action="store_true", help="read restored files back and check their content")
    p.set_defaults(func=run)


_TOTALS = ("total_files_processed", "total_bytes_processed")


def run(args: argparse.Namespace) -> int:
    if os.path.lexists(args.target) and not os.path.isdir(args.target):
        raise UsageError(f"--target {args.target} is not a folder: give a folder (one that does not exist is created)")
    ref, _, sub = args.snapshot.partition(":")
    start = time.monotonic()
    with open_repository(args, lock="shared") as repo:
        sid, snap = repo.find_snapshot(ref)
        tree = snap.tree
        if sub:
            node = lookup(repo, tree, sub)
            if node.type != DIR or node.subtree is None:
                raise UsageError(f"{sub} is not a directory in snapshot {sid[:8]}")
            tree = node.subtree

        restorer = Restorer(
            repo, tree, args.target, includes=args.include, excludes=args.exclude, verify=args.verify
        )
        if not args.json and not args.quiet:
            err(f"restoring snapshot {sid[:8]} of {', '.join(snap.paths)} to {args.target}")
        whole = not (sub or args.include or args.exclude)  # then the snapshot's summary is the total
        totals = [summary_count(snap.summary, k) if whole else None for k in _TOTALS]
        with Progress(args.quiet, args.json, restore_figures(restorer.stats, *totals)):
            stats = restorer.run()
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
                "others_restored": stats.others,
                "bytes_restored": stats.bytes_written,
                "files_verified": stats.verified_files,
                "errors": len(stats.errors),
                "duration_seconds": round(elapsed, 3),
            }
        )
    elif not args.quiet:
        print(
            f"restored {stats.files} files, {stats.dirs} dirs, {stats.others} others (symlinks, devices, fifos), "
            f"{human_size(stats.bytes_written)} in {elapsed:.2f}s"
        )
        if args.verify:
            print(f"verified {stats.verified_files} files")
    if stats.errors:
        raise IntegrityError(f"restore finished with {len(stats.errors)} errors")
    return 0
