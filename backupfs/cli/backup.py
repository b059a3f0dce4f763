"""`backupfs backup`: save files, directories or a stream as a new snapshot."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading

from backupfs.cli._common import format_time, iso_time, open_repository, parse_size
from backupfs.cli._output import err, human_size, print_json, print_line
from backupfs.cli._progress import Progress, backup_figures, progress_mode, stream_figures
from backupfs.cli._quote import escape, json_name
from backupfs.errors import BackupfsError, UsageError
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, FILE, Node
from backupfs.ops.backup import Archiver, BackupOptions
from backupfs.ops.excludes import TagFile, read_exclude_file
from backupfs.ops.sources import ListKind, parse_files_from
from backupfs.repository.retention import ProtectStats

EXIT_SKIPPED = 3
_PATTERNS = "patterns: see docs/usage.md (a later !PATTERN takes back what an earlier one matched)"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "backup",
        help="create a new snapshot of files and directories",
        description="Saves PATHs as a new snapshot. Exit code 3: saved, but some paths could not be read "
        "(a missing PATH included); they are listed on stderr.",
        epilog=_PATTERNS,
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files and folders to back up (missing ones are skipped; with --stdin-from-command: the command)",
    )
    p.add_argument("-n", "--dry-run", action="store_true", help="read and hash everything, write nothing to the repository")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="list each file and folder as new, modified or unchanged"
    )
    p.add_argument(
        "--files-from", action="append", default=[], metavar="FILE",
        help="back up the paths in FILE: one glob pattern a line, # comments (- reads stdin; repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--files-from-verbatim", action="append", default=[], metavar="FILE",
        help="back up the paths in FILE: one path a line, taken literally (- reads stdin; repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--files-from-raw", action="append", default=[], metavar="FILE",
        help="back up the paths in FILE, each ended by a NUL byte, as `find -print0` writes (- reads stdin)",
    )  # fmt: skip
    p.add_argument(
        "-e", "--exclude", action="append", default=[], metavar="PATTERN",
        help="leave out what matches (repeatable; syntax: docs/usage.md)",
    )  # fmt: skip
    p.add_argument(
        "--iexclude", action="append", default=[], metavar="PATTERN", help="as --exclude, ignoring case"
    )
    p.add_argument(
        "--exclude-file", action="append", default=[], metavar="FILE",
        help="patterns from FILE, one a line, # comments, $VAR expanded",
    )  # fmt: skip
    p.add_argument(
        "--iexclude-file", action="append", default=[], metavar="FILE", help="as --exclude-file, ignoring case"
    )
    p.add_argument("--exclude-caches", action="store_true", help="skip folders holding a valid CACHEDIR.TAG")
    p.add_argument(
        "--exclude-if-present", action="append", default=[], metavar="NAME[:CONTENT]",
        help="skip the contents (but NAME) of folders holding a file NAME that starts with CONTENT if given",
    )  # fmt: skip
    p.add_argument(
        "--exclude-larger-than", metavar="SIZE", help="skip files larger than SIZE (e.g. 500K, 2M, 1G; bytes without unit)"
    )
    p.add_argument("-x", "--one-file-system", action="store_true", help="do not cross file system boundaries")
    p.add_argument("--tag", action="append", default=[], help="tag the snapshot (repeatable, or a,b)")
    p.add_argument("--host", help="override the host name recorded")
    p.add_argument("--parent", help="compare against this snapshot instead of the latest of the same paths")
    p.add_argument("-f", "--force", action="store_true", help="read every file even if unchanged")
    p.add_argument("--stdin", action="store_true", help="back up standard input")
    p.add_argument("--stdin-filename", default="stdin", help="file name for --stdin (default: stdin)")
    p.add_argument(
        "--stdin-from-command",
        action="store_true",
        help="back up the standard output of the command given after the paths (after --)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = list(args.paths)
    for kind, files in (
        (ListKind.PATTERNS, args.files_from),
        (ListKind.VERBATIM, args.files_from_verbatim),
        (ListKind.RAW, args.files_from_raw),
    ):
        for name in files:
            listed, warnings = parse_files_from(_read_list(name, kind), kind, name)
            for msg in warnings:
                err(f"warning: {msg}")
            if not listed:
                err(f"warning: --{kind.value} {name} names no path")
            paths += listed
    opts = BackupOptions(
        paths=paths,
        excludes=list(args.exclude) + [p for f in args.exclude_file for p in read_exclude_file(f)],
        iexcludes=list(args.iexclude) + [p for f in args.iexclude_file for p in read_exclude_file(f)],
        exclude_caches=args.exclude_caches,
        exclude_if_present=[TagFile.parse(spec) for spec in args.exclude_if_present],
        exclude_larger_than=parse_size(args.exclude_larger_than) if args.exclude_larger_than is not None else None,
        dry_run=args.dry_run,
        one_file_system=args.one_file_system,
        tags=[t for tag in args.tag for t in tag.split(",") if t],
        parent=args.parent,
        force=args.force,
    )
    if args.host:
        opts.host = args.host
    if args.stdin and args.stdin_from_command:
        raise UsageError("--stdin and --stdin-from-command cannot be combined")
    if not (args.stdin or args.stdin_from_command) and not opts.paths:
        if args.files_from or args.files_from_verbatim or args.files_from_raw:
            raise UsageError("nothing to back up: the --files-from lists name no path")
        raise UsageError("nothing to back up: give at least one path (or --stdin)")
    if args.stdin_from_command and not opts.paths:
        raise UsageError("--stdin-from-command needs a command after --")
    if args.stdin and opts.paths:
        raise UsageError("--stdin takes no paths")
    stream = args.stdin or args.stdin_from_command

    def item(action: str, path: bytes, node: Node) -> None:
        if args.json:
            size = node.size if node.type == FILE else None
            print_json({"message_type": "verbose_status", "action": action, **json_name("item", path), "size": size})
        else:  # under the status line's lock: it is cleared first and drawn again below
            print_line(f"{action:<9} {escape(path)}{'/' if node.type == DIR else ''}")

    with open_repository(args, lock="shared") as repo:
        archiver = Archiver(
            repo,
            opts,
            on_item=item if args.verbose else None,
            scan=not stream and progress_mode(args.quiet, args.json) != "off",
        )
        figures = stream_figures(archiver.stats) if stream else backup_figures(archiver)
        with Progress(args.quiet, args.json, figures):
            if args.stdin_from_command:
                snap_id, snap = _backup_command(archiver, opts.paths, args.stdin_filename)
            elif args.stdin:
                snap_id, snap = archiver.run_stream(args.stdin_filename, sys.stdin.buffer)
            else:
                snap_id, snap = archiver.run()
    locked = repo.retention_stats
    promise = snap.time_ns + repo.config.object_lock.days * 86400 * 10**9 if repo.config.object_lock else 0
    stats = archiver.stats
    for path, msg in stats.skipped:
        err(f"error: {path}: {msg}")
    for msg in stats.warnings:
        err(f"warning: {msg}")
    for path in stats.changed_during_read:
        err(f"warning: {path}: file changed while reading (saved as read)")
    parent = archiver.parent_id
    if args.json:
        print_json(
            {
                "message_type": "summary",
                **stats.as_dict(),
                "skipped_paths": [{**_path_json(path), "error": msg} for path, msg in stats.skipped],
                "changed_during_backup": [_path_json(path) for path in stats.changed_during_read],
                "parent_snapshot_id": parent,
                "dry_run": args.dry_run,
                "snapshot_id": snap_id,
                **({"object_lock": _lock_json(locked)} if locked is not None else {}),
            }
        )
    elif not args.quiet:
        if not (args.stdin or args.stdin_from_command):
            print(f"using parent snapshot {parent[:8]}" if parent else "no parent snapshot: every file was read")
        print(f"Files:  {stats.files_new:6} new, {stats.files_changed:6} changed, {stats.files_unchanged:6} unmodified")
        print(f"Dirs:   {stats.dirs_new:6} new, {stats.dirs_changed:6} changed, {stats.dirs_unchanged:6} unmodified")
        print(
            f"Others: {stats.others_new:6} new, {stats.others_changed:6} changed, "
            f"{stats.others_unchanged:6} unmodified  (symlinks, devices, fifos)"
        )
        if args.dry_run:
            print(f"Would add to the repository: {human_size(stats.data_added)} (before compression)")
        else:
            print(f"Added to the repository: {human_size(stats.data_added)}")
        print(
            f"processed {stats.total_files} files, {human_size(stats.total_bytes)} in {stats.duration:.2f}s "
            f"({human_size(stats.bytes_read)} read)"
        )
        if stats.changed_during_read:
            print(f"{len(stats.changed_during_read)} files changed while being read: saved as read, not as one moment")
        if locked is not None and locked.files:
            print(
                f"Object Lock: the {locked.files} files it needs stay undeletable until {format_time(promise)} "
                f"or later ({locked.extended} extended, {locked.checked} dates read)"
            )
        print(f"snapshot {snap_id[:8]} saved" if snap_id else "dry run: nothing was saved")
    if stats.skipped:
        where = f"snapshot {snap_id[:8]}" if snap_id else "the snapshot (dry run)"
        err(f"Warning: {len(stats.skipped)} files could not be read and are missing from {where}")
        return EXIT_SKIPPED
    return 0


def _lock_json(locked: ProtectStats) -> dict[str, object]:
    """Object Lock's cost, its date RFC 3339 as every time in JSON (null: nothing extended)."""
    return {**locked.as_dict(), "until": iso_time(int(locked.until * 1e9)) if locked.until else None}


def _path_json(path: str) -> dict[str, str]:
    """A source path as `json_name` gives stored names: exact, even when it is not UTF-8."""
    return json_name("path", os.fsencode(path))


def _read_list(name: str, kind: ListKind) -> bytes:
    """A --files-from list: a file, or standard input for `-`."""
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read --{kind.value} {name}: {exc.strerror}") from exc


def _backup_command(archiver: Archiver, command: list[str], name: str) -> tuple[str | None, Snapshot]:
    """Streams a command's stdout; if the command fails, no snapshot is written."""
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    except OSError as exc:
        raise BackupfsError(f"cannot run {command[0]!r}: {exc.strerror}") from exc
    assert proc.stdout is not None
    done = threading.Event()

    def check() -> None:
        proc.stdout.close()  # type: ignore[union-attr]
        code = proc.wait()
        done.set()
        if code != 0:
            raise BackupfsError(f"command {command[0]!r} failed with exit code {code}; no snapshot was saved")

    try:
        return archiver.run_stream(name, proc.stdout, check)
    finally:
        if not done.is_set():
            proc.kill()
            proc.wait()
