"""`backupfs diff SNAPSHOT1 SNAPSHOT2 [PATH]`: what changed between two snapshots, as `restic diff`."""

from __future__ import annotations

import argparse
import sys

from backupfs.cli._common import open_repository
from backupfs.cli._output import human_size, print_json
from backupfs.cli._quote import json_name
from backupfs.errors import UsageError
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, FILE, TYPE_NAMES, Node
from backupfs.ops.diff import Change, Differ, SideStats
from backupfs.ops.treeview import lookup, split_path
from backupfs.repository.repo import Repository

DESCRIPTION = """\
Shows what changed from the first snapshot to the second. Each line starts with:
  +  the entry was added          -  the entry was removed
  M  the content changed          T  the type changed (e.g. a file became a symlink)
  U  only metadata changed (mode, owner, mtime, xattrs; shown with --metadata)
  ?  the content changed but size, times and inode did not: bit rot in the source
Folders end in '/'. Folders that are the same in both snapshots are skipped without being read,
so the time taken grows with the change, not with the snapshots. With --json: one JSON object per
line, {"message_type": "change", ...} for each entry and a last {"message_type": "statistics", ...}.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "diff",
        help="show differences between two snapshots",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("snapshot1", metavar="SNAPSHOT1", help="the older snapshot: id, unique prefix or 'latest'")
    p.add_argument("snapshot2", metavar="SNAPSHOT2", help="the newer snapshot: id, unique prefix or 'latest'")
    p.add_argument("path", nargs="?", default="/", metavar="PATH", help="compare only this folder or file (default /)")
    p.add_argument("--metadata", action="store_true", help="also list entries whose metadata alone changed (U)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with open_repository(args, lock="shared") as repo:
        sid1, snap1 = repo.find_snapshot(args.snapshot1)
        sid2, snap2 = repo.find_snapshot(args.snapshot2)
        old, new = _at(repo, snap1, args.path), _at(repo, snap2, args.path)
        if old is None and new is None:
            raise UsageError(f"{args.path}: no such file or directory in either snapshot")
        base = b"/" + b"/".join(split_path(args.path)) if split_path(args.path) else b""
        differ = Differ(repo, metadata=args.metadata)
        if not args.json and not args.quiet:
            print(f"comparing snapshot {sid1[:8]} to {sid2[:8]}:\n", flush=True)
        for change in differ.changes(old, new, base):
            if args.json:
                print_json(change_json(change))
            elif not args.quiet:
                suffix = b"/" if change.node.type == DIR else b""
                out.write(f"{change.modifier:<5}".encode() + (change.path or b"/") + suffix + b"\n")
        out.flush()
    stats = differ.stats
    if args.json:
        print_json(
            {
                "message_type": "statistics",
                "source_snapshot_id": sid1,
                "target_snapshot_id": sid2,
                **json_name("path", base or b"/"),
                "changed_files": stats.changed_files,
                "metadata_changed": stats.metadata_changed,
                "type_changed": stats.type_changed,
                "added": _side_json(stats.added),
                "removed": _side_json(stats.removed),
            }
        )
    else:
        a, r = stats.added, stats.removed
        if not args.quiet:
            print()
        print(f"Files:       {a.files:5} new, {r.files:5} removed, {stats.changed_files:5} changed")
        print(f"Dirs:        {a.dirs:5} new, {r.dirs:5} removed")
        print(f"Others:      {a.others:5} new, {r.others:5} removed")
        print(f"Data Blobs:  {a.data_blobs:5} new, {r.data_blobs:5} removed")
        print(f"Tree Blobs:  {a.tree_blobs:5} new, {r.tree_blobs:5} removed")
        print(f"  Added:   {human_size(a.bytes)}")
        print(f"  Removed: {human_size(r.bytes)}")
    return 0


def _at(repo: Repository, snap: Snapshot, path: str) -> Node | None:
    """The entry at `path`, or None where the snapshot lacks it (then all of it is added or removed)."""
    try:
        return lookup(repo, snap.tree, path)
    except UsageError:
        if b".." in split_path(path):
            raise
        return None


def change_json(change: Change) -> dict[str, object]:
    old, new = change.old, change.new
    return {
        "message_type": "change",
        **json_name("path", change.path or b"/"),
        "modifier": change.modifier,
        "type": TYPE_NAMES[change.node.type],
        "size_before": old.size if old is not None and old.type == FILE else None,
        "size_after": new.size if new is not None and new.type == FILE else None,
    }


def _side_json(side: SideStats) -> dict[str, int]:
    return {
        "files": side.files,
        "dirs": side.dirs,
        "others": side.others,
        "data_blobs": side.data_blobs,
        "tree_blobs": side.tree_blobs,
        "bytes": side.bytes,
    }
