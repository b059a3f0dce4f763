"""`backupfs find PATTERN...`: which snapshots hold a name or glob, as `restic find`."""

from __future__ import annotations

import argparse
import os
import stat
import sys

from backupfs.cli._args import point_in_time
from backupfs.cli._common import format_time, iso_time, open_repository
from backupfs.cli._output import human_size, print_json
from backupfs.cli._quote import json_name
from backupfs.cli.ls import node_json
from backupfs.cli.snapshots import add_filter_args, matches
from backupfs.errors import UsageError
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import FILE, FMT_OF_TYPE, Node
from backupfs.ops.find import IdHit, PathMatcher, find_ids, find_paths, parse_id_prefixes
from backupfs.repository.repo import Repository

DESCRIPTION = """\
Searches snapshots (all, newest first, or those chosen with --snapshot, --host, --tag, --path)
for entries whose path matches a PATTERN. Patterns are those of --exclude: '*' and '?' stay within
one path component, '**' spans any number; a pattern without a leading '/' matches any run of
components ('docs' finds every folder named docs and what is in it, '*.pdf' every PDF), one with
a leading '/' is anchored at the root. With --blob or --tree the arguments are ids (or prefixes of
at least 4 hex digits) of chunks or folder listings, as `check` names them, and find tells which
files and folders of which snapshots use them.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "find",
        help="find files and folders (or blob and tree ids) in snapshots",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("patterns", nargs="+", metavar="PATTERN", help="name, glob or path to look for (or ids, see --blob)")
    p.add_argument(
        "-s", "--snapshot", action="append", default=[], metavar="ID", help="search only this snapshot (repeatable)"
    )
    add_filter_args(p)
    p.add_argument(
        "-O",
        "--oldest",
        type=point_in_time,
        metavar="TIME",
        help="only entries modified at or after TIME (2024-05-01, '2024-05-01 13:30', RFC 3339)",
    )
    p.add_argument("-N", "--newest", type=point_in_time, metavar="TIME", help="only entries modified at or before TIME")
    p.add_argument("-i", "--ignore-case", action="store_true", help="match patterns regardless of case")
    p.add_argument("-l", "--long", action="store_true", help="show mode and owner as well as size and time")
    p.add_argument("-R", "--reverse", action="store_true", help="search the oldest snapshots first")
    ids = p.add_mutually_exclusive_group()
    ids.add_argument("--blob", action="store_true", help="the arguments are data blob (chunk) ids")
    ids.add_argument("--tree", action="store_true", help="the arguments are tree (folder listing) ids")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.oldest is not None and args.newest is not None and args.oldest > args.newest:
        raise UsageError("--oldest is later than --newest: nothing can match")
    if args.blob or args.tree:
        prefixes = parse_id_prefixes(args.patterns, "blob" if args.blob else "tree")
        matcher = None
    else:
        matcher = PathMatcher(args.patterns, args.ignore_case)
    with open_repository(args, lock="shared") as repo:
        snaps = _selected(repo, args)
        if matcher is None:
            return _run_ids(repo, snaps, prefixes, args)
        out = sys.stdout.buffer
        found: list[dict[str, object]] = []
        for sid, snap in snaps:
            hits = 0
            matches: list[dict[str, object]] = []
            for path, node in find_paths(repo, snap.tree, matcher, args.oldest, args.newest):
                if args.json:
                    matches.append(node_json(path, node))
                else:
                    if hits == 0:
                        out.write(
                            f"Found matching entries in snapshot {sid[:8]} from {format_time(snap.time_ns)}\n".encode()
                        )
                    out.write(_line(path, node, args.long) + b"\n")
                hits += 1
            if hits and args.json:
                found.append({"snapshot_id": sid, "time": iso_time(snap.time_ns), "hits": hits, "matches": matches})
            elif hits:
                out.write(b"\n")
        out.flush()
    if args.json:
        print_json(found)
    return 0


def _selected(repo: Repository, args: argparse.Namespace) -> list[tuple[str, Snapshot]]:
    """Newest first, as restic; ids given are looked up (a wrong one is an error, not 'no match')."""
    everything = repo.list_snapshots()
    if args.snapshot:
        chosen = dict(repo.find_snapshot(ref, everything) for ref in args.snapshot)
        snaps = sorted(chosen.items(), key=lambda p: (p[1].time_ns, p[0]))
    else:
        snaps = [(sid, s) for sid, s in everything if matches(s, args)]
    return snaps if args.reverse else snaps[::-1]


def _line(path: bytes, node: Node, long: bool) -> bytes:
    size = human_size(node.size) if node.type == FILE else "-"
    head = f"{format_time(node.mtime_ns)} {size:>12}  "
    if long:
        mode = stat.filemode(FMT_OF_TYPE[node.type] | node.mode)
        head = f"{mode} {node.user or node.uid}/{node.group or node.gid} " + head
    target = b" -> " + node.link_target if node.link_target else b""
    return head.encode() + path + target


def _run_ids(repo: Repository, snaps: list[tuple[str, Snapshot]], prefixes: list[str], args: argparse.Namespace) -> int:
    kind = "blob" if args.blob else "tree"
    found: list[dict[str, object]] = []
    for sid, snap in snaps:
        hits = find_ids(repo, snap.tree, blobs=prefixes if args.blob else (), trees=prefixes if args.tree else ())
        for hit in hits:
            record = _hit_json(repo, hit, sid, snap)
            if args.json:
                found.append(record)
                continue
            print(f"Found {kind} {hit.id.hex()}")
            if hit.kind == "blob":
                print(f" ... in file {os.fsdecode(hit.path)}")
                print(f"     (tree {hit.parent_tree.hex() if hit.parent_tree else '-'})")
            else:
                print(f" ... path {os.fsdecode(hit.path)}")
            pack = record["pack"]
            print(f" ... in pack {pack}" if pack else " ... in no pack (missing from the index)")
            print(f" ... in snapshot {sid[:8]} ({format_time(snap.time_ns)})")
    if args.json:
        print_json(found)
    return 0


def _hit_json(repo: Repository, hit: IdHit, sid: str, snap: Snapshot) -> dict[str, object]:
    loc = repo.index.lookup(hit.id)
    return {
        "object_type": hit.kind,
        "id": hit.id.hex(),
        **json_name("path", hit.path),
        "parent_tree": hit.parent_tree.hex() if hit.parent_tree else None,
        "pack": loc.pack_id.hex() if loc is not None else None,
        "snapshot_id": sid,
        "time": iso_time(snap.time_ns),
    }
