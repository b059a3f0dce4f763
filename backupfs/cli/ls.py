"""`backupfs ls SNAPSHOT [PATH]`: list the files of a snapshot.

Names are escaped (`_quote.escape`), so a stored name cannot forge an output line or drive the
terminal; `--json` keeps them exact (`_quote.json_name`). An entry the reader rules left out or
showed repaired (format.md 9) is named in a warning on stderr, the rest is listed, and the exit
code is then 4.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys

from backupfs.cli._common import format_time, iso_time, open_repository
from backupfs.cli._output import err, print_json
from backupfs.cli._quote import escape, json_name
from backupfs.cli.snapshots import snapshot_json
from backupfs.errors import IntegrityError
from backupfs.format.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, FMT_OF_TYPE, SYMLINK, EntryProblem, Node
from backupfs.ops.treeview import iter_tree, lookup, split_path

_TYPE_NAMES = {FILE: "file", DIR: "dir", SYMLINK: "symlink", FIFO: "fifo", CHARDEV: "chardev", BLOCKDEV: "blockdev"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ls", help="list files in a snapshot")
    p.add_argument("snapshot", help="snapshot id, prefix or 'latest'")
    p.add_argument("path", nargs="?", default="/", help="directory or file inside the snapshot (default /)")
    p.add_argument("-l", "--long", action="store_true", help="show mode, owner, size and time")
    p.add_argument("--no-recursive", action="store_true", help="list only the given directory")
    p.set_defaults(func=run)


def node_json(path: bytes, node: Node) -> dict[str, object]:
    return {
        **json_name("name", node.name),
        "type": _TYPE_NAMES[node.type],
        **json_name("path", path),
        "uid": node.uid,
        "gid": node.gid,
        "user": node.user,
        "group": node.group,
        "size": node.size if node.type == FILE else None,
        "mode": FMT_OF_TYPE[node.type] | node.mode,
        "permissions": stat.filemode(FMT_OF_TYPE[node.type] | node.mode),
        "mtime": iso_time(node.mtime_ns),
        "atime": iso_time(node.atime_ns),
        "ctime": iso_time(node.ctime_ns),
        "inode": node.inode,
        **(json_name("link_target", node.link_target) if node.type == SYMLINK and node.link_target is not None else {}),
        "struct_type": "node",
    }


def long_line(path: bytes, node: Node) -> str:
    mode = stat.filemode(FMT_OF_TYPE[node.type] | node.mode)
    owner = escape(f"{node.user or node.uid}/{node.group or node.gid}")
    target = f" -> {escape(node.link_target)}" if node.link_target and node.type == SYMLINK else ""
    return f"{mode} {owner:>16} {node.size:>12} {format_time(node.mtime_ns)} {escape(path)}{target}"


def run(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    problems = 0

    def warn(folder: bytes, problem: EntryProblem) -> None:
        nonlocal problems
        problems += 1
        err(f"warning: {problem.text(os.fsdecode(folder))}")

    with open_repository(args, lock="shared") as repo:
        sid, snap = repo.find_snapshot(args.snapshot)
        start = lookup(repo, snap.tree, args.path)
        base = b"/" + b"/".join(split_path(args.path)) if split_path(args.path) else b""
        if args.json:
            print_json({**snapshot_json(sid, snap), "struct_type": "snapshot"})
        entries: list[tuple[bytes, Node]]
        if start.type != DIR:
            entries = [(base, start)]
        elif start.subtree is None:
            entries = []
        elif args.no_recursive:
            listing = repo.load_tree(start.subtree)
            for problem in listing.problems:
                warn(base or b"/", problem)
            entries = [(base + b"/" + n.name, n) for n in listing]
        else:
            entries = iter_tree(repo, start.subtree, base, warn)  # type: ignore[assignment]
        for path, node in entries:
            if args.json:
                print_json(node_json(path, node))
            elif args.long:
                out.write(long_line(path, node).encode("utf-8", "backslashreplace") + b"\n")
            else:
                out.write(escape(path).encode("utf-8", "backslashreplace") + b"\n")
    out.flush()
    if problems:
        raise IntegrityError(f"{problems} entries were left out or shown repaired (see the warnings above)")
    return 0
