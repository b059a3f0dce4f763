"""`backupfs restore SNAPSHOT[:PATH] --target DIR`: write a snapshot back to disk."""

from __future__ import annotations

import argparse
import os
import time

from backupfs.cli._common import open_repository
from backupfs.cli._output import err, human_size, print_json, print_line
from backupfs.cli._progress import Progress, restore_figures
from backupfs.cli._quote import escape, json_name
from backupfs.cli.snapshots import summary_count
from backupfs.errors import BackupfsError, IntegrityError, UsageError
from backupfs.format.tree import DIR, FILE, Node
from backupfs.ops.restore import Overwrite, Restorer
from backupfs.ops.treeview import lookup


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "restore",
        help="restore a snapshot into a directory",
        description="Writes a snapshot (or SNAP:PATH, a folder of it) into DIR, which may hold files already "
        "(see --overwrite). Never writes outside DIR. Exit code 4: the snapshot's data is damaged; "
        "1: something in the target could not be written.",
        epilog="patterns: see docs/usage.md (a later !PATTERN takes back what an earlier one matched)",
    )
    p.add_argument("snapshot", help="snapshot id, prefix or 'latest'; SNAP:PATH restores a sub-folder")
    p.add_argument("-t", "--target", required=True, metavar="DIR", help="directory to restore into")
    p.add_argument(
        "-i", "--include", action="append", default=[], metavar="PATTERN", help="restore only what matches (repeatable)"
    )
    p.add_argument(
        "-e", "--exclude", action="append", default=[], metavar="PATTERN", help="leave out what matches (repeatable)"
    )
    p.add_argument(
        "--overwrite",
        choices=[o.value for o in Overwrite],
        default=Overwrite.ALWAYS.value,
        help="for files already in DIR: always (default: replace those whose content differs, read to compare), "
        "if-changed (trust size and modification time), if-newer (only if the snapshot's is newer), never",
    )
    p.add_argument(
        "--delete",
        action="store_true",
        help="remove what restored folders hold that the snapshot does not (excluded names are kept); "
        "try with --dry-run -v first",
    )
    p.add_argument("-n", "--dry-run", action="store_true", help="write nothing: say what would be done")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="list each entry as added, updated, unchanged or deleted"
    )
    p.add_argument("--verify", action="store_true", help="read restored files back and check their content")
    p.set_defaults(func=run)


_TOTALS = ("total_files_processed", "total_bytes_processed")


def run(args: argparse.Namespace) -> int:
    if os.path.lexists(args.target) and not os.path.isdir(args.target):
        raise UsageError(f"--target {args.target} is not a folder: give a folder (one that does not exist is created)")
    ref, _, sub = args.snapshot.partition(":")
    start = time.monotonic()
    target = os.path.abspath(args.target)

    def item(action: str, path: bytes, node: Node | None) -> None:
        if args.json:
            size = node.size if node is not None and node.type == FILE else None
            print_json({"message_type": "verbose_status", "action": action, **json_name("item", path), "size": size})
        else:  # under the status line's lock: it is cleared first and drawn again below
            print_line(f"{action:<9} {escape(path or b'/')}{'/' if node is not None and node.type == DIR else ''}")

    with open_repository(args, lock="shared") as repo:
        sid, snap = repo.find_snapshot(ref)
        tree = snap.tree
        if sub:
            node = lookup(repo, tree, sub)
            if node.type != DIR or node.subtree is None:
                raise UsageError(f"{sub} is not a directory in snapshot {sid[:8]}")
            tree = node.subtree

        restorer = Restorer(
            repo,
            tree,
            target,
            includes=args.include,
            excludes=args.exclude,
            verify=args.verify,
            overwrite=Overwrite(args.overwrite),
            delete=args.delete,
            dry_run=args.dry_run,
            on_action=item if args.verbose else None,
        )
        if not args.json and not args.quiet:
            what = "would restore" if args.dry_run else "restoring"
            err(f"{what} snapshot {sid[:8]} of {', '.join(snap.paths)} to {target}")
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
                "added": stats.added,
                "updated": stats.updated,
                "unchanged": stats.unchanged,
                "deleted": stats.deleted,
                "dry_run": args.dry_run,
                "errors": len(stats.errors),
                "duration_seconds": round(elapsed, 3),
            }
        )
    elif not args.quiet:
        verb = "would restore" if args.dry_run else "restored"
        print(
            f"{verb} {stats.files} files, {stats.dirs} dirs, {stats.others} others (symlinks, devices, fifos), "
            f"{human_size(stats.bytes_written)} in {elapsed:.2f}s"
        )
        print(
            f"entries: {stats.added} added, {stats.updated} updated, {stats.unchanged} unchanged, "
            f"{stats.deleted} deleted{' (dry run: nothing written)' if args.dry_run else ''}"
        )
        if args.verify:
            print(f"verified {stats.verified_files} files")
    if stats.integrity_errors:
        raise IntegrityError(f"restore finished with {len(stats.errors)} errors")
    if stats.errors:
        raise BackupfsError(f"restore finished with {len(stats.errors)} errors")
    return 0
