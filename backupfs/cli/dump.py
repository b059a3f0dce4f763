"""`backupfs dump SNAPSHOT PATH`: a file's content, or a folder as a tar or zip stream, as restic dump."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from backupfs.cli._common import open_repository
from backupfs.cli._output import err, print_json
from backupfs.cli._quote import json_name
from backupfs.errors import IntegrityError, UsageError
from backupfs.format.tree import FILE
from backupfs.ops.dump import Dumper
from backupfs.ops.treeview import lookup, split_path

DESCRIPTION = """\
Writes one file of a snapshot as it is, or a folder (or '/': the whole snapshot) as an archive:
tar (default; pax format with modes, owners, nanosecond times, symlinks, hard links, devices,
xattrs and ACLs, e.g. `tar --xattrs --acls -xpf`) or zip. Names in the archive are the paths in
the snapshot without the leading '/'. The output is standard output (never a terminal for an
archive) or --target FILE. Data is streamed: memory stays small for any size. `cat` prints single
files too.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "dump",
        help="write a file, or a folder as a tar or zip archive, from a snapshot",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("snapshot", help="snapshot id, unique prefix or 'latest'")
    p.add_argument("path", help="file or folder inside the snapshot ('/' for all of it)")
    p.add_argument(
        "-a", "--archive", choices=("tar", "zip"), default="tar", help="archive format for folders (default tar)"
    )
    p.add_argument(
        "-t", "--target", metavar="FILE", help="write to FILE (replaced when complete) instead of standard output"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.json and not args.target:
        raise UsageError("--json needs --target: standard output carries the dumped data")
    with open_repository(args, lock="shared") as repo:
        _sid, snap = repo.find_snapshot(args.snapshot)
        node = lookup(repo, snap.tree, args.path)
        path = b"/" + b"/".join(split_path(args.path))
        archive = node.type != FILE
        if archive and not args.target and sys.stdout.isatty():
            raise UsageError("standard output is a terminal: redirect it, or use --target FILE")
        with _output(args.target) as raw:
            out = _Counting(raw)
            dumper = Dumper(repo, out, lambda msg: err(f"warning: {msg}"))  # type: ignore[arg-type]
            try:
                if not archive:
                    dumper.write_file(path, node)
                elif args.archive == "zip":
                    dumper.write_zip(path, node)
                else:
                    dumper.write_tar(path, node)
            finally:
                dumper.close()
    if args.json:
        print_json(
            {
                "message_type": "summary",
                **json_name("path", path),
                "target": args.target,
                "format": args.archive if archive else "file",
                "bytes_written": out.count,
                "damaged": [json_name("path", p) for p in dumper.damaged],
            }
        )
    if dumper.damaged:
        raise IntegrityError(f"{len(dumper.damaged)} files had chunks that could not be read (written as zeros)")
    return 0


@contextlib.contextmanager
def _output(target: str | None) -> Iterator[BinaryIO]:
    """Standard output, or a temporary file beside `target` renamed over it once complete (a
    failed dump leaves no half file under the name); a target that is no regular file is written
    as it is."""
    if not target:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        special = not stat.S_ISREG(os.stat(target).st_mode)
    except FileNotFoundError:
        special = False
    if special:  # /dev/null, a fifo: written in place (never replaced by a file)
        with open(target, "wb") as f:
            yield f
        return
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _Counting:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.count = 0

    def write(self, data: bytes | memoryview) -> int:
        self._out.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()
