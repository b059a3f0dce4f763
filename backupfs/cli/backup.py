"""`backupfs backup`: save files, directories or a stream as a new snapshot."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading

from backupfs.cli._common import format_time, iso_time, open_repository
from backupfs.cli._output import err, human_size, print_json
from backupfs.cli._progress import Progress, backup_figures, progress_mode, stream_figures
from backupfs.cli._quote import json_name
from backupfs.errors import BackupfsError, UsageError
from backupfs.format.snapshot import Snapshot
from backupfs.ops.backup import Archiver, BackupOptions
from backupfs.ops.excludes import read_exclude_file
from backupfs.repository.retention import ProtectStats

EXIT_SKIPPED = 3


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("backup", help="create a new snapshot of files and directories")
    p.add_argument(
        "paths", nargs="*", metavar="PATH", help="files and folders to back up (with --stdin-from-command: the command)"
    )
    p.add_argument(
        "-e",
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out what matches (repeatable; syntax: docs/usage.md)",
    )
    p.add_argument("--exclude-file", action="append", default=[], metavar="FILE", help="patterns, one per line")
    p.add_argument("--exclude-caches", action="store_true", help="skip folders holding a valid CACHEDIR.TAG")
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
    opts = BackupOptions(
        paths=list(args.paths),
        excludes=list(args.exclude) + [p for f in args.exclude_file for p in read_exclude_file(f)],
        exclude_caches=args.exclude_caches,
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
        raise UsageError("nothing to back up: give at least one path (or --stdin)")
    if args.stdin_from_command and not opts.paths:
        raise UsageError("--stdin-from-command needs a command after --")
    if args.stdin and opts.paths:
        raise UsageError("--stdin takes no paths")
    stream = args.stdin or args.stdin_from_command
    with open_repository(args, lock="shared") as repo:
        archiver = Archiver(repo, opts, scan=not stream and progress_mode(args.quiet, args.json) != "off")
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
    if args.json:
        print_json(
            {
                "message_type": "summary",
                **stats.as_dict(),
                "skipped_paths": [{**_path_json(path), "error": msg} for path, msg in stats.skipped],
                "changed_during_backup": [_path_json(path) for path in stats.changed_during_read],
                "snapshot_id": snap_id,
                **({"object_lock": _lock_json(locked)} if locked is not None else {}),
            }
        )
    elif not args.quiet:
        print(f"Files:  {stats.files_new:6} new, {stats.files_changed:6} changed, {stats.files_unchanged:6} unmodified")
        print(f"Dirs:   {stats.dirs_new:6} new, {stats.dirs_changed:6} changed, {stats.dirs_unchanged:6} unmodified")
        print(
            f"Others: {stats.others_new:6} new, {stats.others_changed:6} changed, "
            f"{stats.others_unchanged:6} unmodified  (symlinks, devices, fifos)"
        )
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
        print(f"snapshot {snap_id[:8]} saved")
    if stats.skipped:
        err(f"Warning: {len(stats.skipped)} files could not be read and are missing from snapshot {snap_id[:8]}")
        return EXIT_SKIPPED
    return 0


def _lock_json(locked: ProtectStats) -> dict[str, object]:
    """Object Lock's cost, its date RFC 3339 as every time in JSON (null: nothing extended)."""
    return {**locked.as_dict(), "until": iso_time(int(locked.until * 1e9)) if locked.until else None}


def _path_json(path: str) -> dict[str, str]:
    """A source path as `json_name` gives stored names: exact, even when it is not UTF-8."""
    return json_name("path", os.fsencode(path))


def _backup_command(archiver: Archiver, command: list[str], name: str) -> tuple[str, Snapshot]:
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
