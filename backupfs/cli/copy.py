"""`backupfs copy --from-repo SRC [SNAP...]`: copy snapshots into this repository (3-2-1)."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import subprocess
import sys
import time
from collections.abc import Iterator

from backupfs.cli._common import open_backend, open_repository
from backupfs.cli._output import err, human_size, print_json
from backupfs.cli._progress import Progress, copy_figures
from backupfs.cli.snapshots import add_filter_args, matches
from backupfs.errors import BackupfsError, RepositoryNotFound, UsageError, WrongPassword
from backupfs.format.snapshot import Snapshot
from backupfs.ops.copy import Copier
from backupfs.repository.repo import Repository


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "copy",
        help="copy snapshots from another repository into this one",
        description="Copies snapshots (and only the data this repository lacks) from --from-repo into the "
        "repository given by -r. Snapshots copied before are skipped, so running it nightly is cheap.",
    )
    p.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="ids, prefixes or 'latest' (default: all)")
    add_from_repo_args(p)
    add_filter_args(p)
    p.set_defaults(func=run)


def add_from_repo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-repo", metavar="REPO", help="source repository (env BACKUPFS_FROM_REPOSITORY)")
    p.add_argument(
        "--from-password-file", metavar="FILE", help="source password file (env BACKUPFS_FROM_PASSWORD_FILE)"
    )
    p.add_argument("--from-password-command", metavar="CMD", help="command printing the source password")


def _from_password(args: argparse.Namespace) -> bytes:
    """--from-password-command, --from-password-file, BACKUPFS_FROM_PASSWORD[_FILE], or a prompt."""
    command = args.from_password_command or os.environ.get("BACKUPFS_FROM_PASSWORD_COMMAND")
    file = args.from_password_file or os.environ.get("BACKUPFS_FROM_PASSWORD_FILE")
    if command:
        proc = subprocess.run(command, shell=True, stdout=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            raise BackupfsError(f"source password command failed with exit code {proc.returncode}")
        password = proc.stdout.rstrip(b"\r\n")
    elif file:
        try:
            with open(file, "rb") as f:
                password = f.read().rstrip(b"\r\n")
        except OSError as exc:
            raise BackupfsError(f"cannot read source password file {file}: {exc.strerror}") from exc
    elif "BACKUPFS_FROM_PASSWORD" in os.environ:
        password = os.fsencode(os.environ["BACKUPFS_FROM_PASSWORD"])
    elif sys.stdin.isatty():
        password = getpass.getpass("enter password for source repository: ").encode()
    else:
        raise UsageError(
            "no source password given: use --from-password-file, BACKUPFS_FROM_PASSWORD(_FILE) "
            "or --from-password-command"
        )
    if not password:
        raise UsageError("an empty source password is not allowed")
    return password


@contextlib.contextmanager
def open_from_repository(
    args: argparse.Namespace, *, lock: bool = True, load_index: bool = True
) -> Iterator[Repository]:
    """The source repository of `copy` and `init --copy-chunker-params`, with its own password."""
    url = args.from_repo or os.environ.get("BACKUPFS_FROM_REPOSITORY")
    if not url:
        raise UsageError("no source repository: use --from-repo or set BACKUPFS_FROM_REPOSITORY")
    backend = open_backend(url)
    if not backend.exists():
        raise RepositoryNotFound(f"no source repository at {backend.location}")
    try:
        repo = Repository.open(
            backend, _from_password(args), warn=lambda msg: err(f"warning: source repository: {msg}")
        )
    except WrongPassword as exc:
        raise WrongPassword(f"source repository {backend.location}: wrong password or no key found") from exc
    try:
        if lock and not getattr(args, "no_lock", False):
            repo.lock(exclusive=False, retry_for=float(getattr(args, "retry_lock", 0) or 0))
        if load_index:
            repo.load_index()
        yield repo
    finally:
        repo.close()


def _select(src: Repository, args: argparse.Namespace) -> tuple[list[tuple[str, Snapshot]], list[tuple[str, Snapshot]]]:
    everything = src.list_snapshots()
    if args.snapshots:
        chosen = dict(src.find_snapshot(ref, everything) for ref in args.snapshots)
        selected = [(sid, snap) for sid, snap in everything if sid in chosen]
    else:
        selected = everything
    return [(sid, snap) for sid, snap in selected if matches(snap, args)], everything


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    log = (lambda _m: None) if args.quiet or args.json else err
    with open_from_repository(args) as src, open_repository(args, lock="shared") as dst:
        if src.header.repo_id == dst.header.repo_id:
            raise UsageError("source and destination are the same repository")
        selected, everything = _select(src, args)
        with (
            Copier(src, dst, log=log) as copier,
            Progress(args.quiet, args.json, copy_figures(copier.stats, len(selected))),
        ):
            copier.copy_all(selected, everything)
        stats, added = copier.stats, dst.stats_added_bytes
    elapsed = time.monotonic() - start
    if args.json:
        print_json(
            {
                "message_type": "summary",
                "snapshots_copied": stats.copied,
                "snapshots_skipped": stats.skipped,
                "blobs_read": stats.blobs_read,
                "bytes_read": stats.bytes_read,
                "data_added": added,
                "duration_seconds": round(elapsed, 3),
            }
        )
    elif not args.quiet:
        print(
            f"copied {stats.copied} snapshots ({stats.skipped} already there), read {human_size(stats.bytes_read)}, "
            f"added {human_size(added)} in {elapsed:.2f}s"
        )
    return 0
