"""`backupfs mount MOUNTPOINT [SNAPSHOT]`: every snapshot (or one) as a read-only filesystem, in the
foreground."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from backupfs.cli._common import open_repository, parse_size
from backupfs.cli._output import err, print_json
from backupfs.cli._quote import EscapingFilter
from backupfs.errors import BackupfsError, UsageError
from backupfs.format.tree import DIR, Node
from backupfs.ops.treeview import lookup


class FuseUnavailable(BackupfsError):
    """The kernel or the system cannot provide FUSE here."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "mount",
        help="mount the repository as a read-only filesystem",
        description="Serves every snapshot under MOUNTPOINT (or, given SNAPSHOT, that snapshot's files "
        "at MOUNTPOINT itself) until Ctrl-C, SIGTERM or `fusermount3 -u MOUNTPOINT`.",
    )
    p.add_argument("mountpoint", help="an existing empty directory")
    p.add_argument(
        "snapshot",
        nargs="?",
        help="mount only this snapshot (id, prefix or 'latest'; SNAP:PATH for a folder of it) at MOUNTPOINT, "
        "as borg mount REPO::ARCHIVE",
    )
    p.add_argument(
        "--allow-other", action="store_true", help="let other users in (the kernel then enforces stored permissions)"
    )
    p.add_argument("--cache-size", default="16M", metavar="SIZE", help="decrypted chunks kept in memory (default 16M)")
    p.add_argument(
        "--refresh", type=float, default=3.0, metavar="SECONDS", help="how often to look for new snapshots (default 3)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what the mount does")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(EscapingFilter())  # the mount logs stored paths
    logging.basicConfig(
        handlers=[handler],
        format="backupfs: %(relativeCreated)d ms: %(message)s" if args.verbose else "backupfs: %(message)s",
        level=logging.INFO if args.verbose else logging.WARNING,
    )
    if args.refresh <= 0:
        raise UsageError("--refresh must be positive")
    cache_bytes = parse_size(args.cache_size)
    mountpoint = check_mountpoint(args.mountpoint)
    check_fuse_available()
    # trio and pyfuse3 take ~0.2 s to import: not at the top, so that other commands do not pay
    # for them (and run where libfuse3 is missing), and in a thread, so that the import overlaps
    # the password's key derivation (which releases the GIL) instead of delaying the mount.
    importer = threading.Thread(target=_import_quietly, args=("backupfs.mount.lifecycle",), daemon=True)
    importer.start()

    what = "every snapshot"
    one: dict[str, str | None] = {"snapshot_id": None, "path": None}  # --json: what is mounted

    def ready() -> None:
        logging.getLogger(__name__).info("mounted")
        if args.json:  # a script waits for this line before it uses the mount
            print_json({"message_type": "mounted", "mountpoint": mountpoint, **one})
        elif not args.quiet:
            err(f"mounted {what} at {mountpoint}; Ctrl-C or `fusermount3 -u {mountpoint}` unmounts")

    # No lock: a mount may stay up for weeks and must not stop prune; it copes with packs that
    # prune removes (index reload) and with snapshots that forget removes (they disappear).
    with open_repository(args, lock=None, load_index=False) as repo:
        # The index loads while the imports finish (this thread would only wait for them): the
        # first `ls` inside a snapshot needs it, and it used to start only once mounted.
        pool = ThreadPoolExecutor(1, thread_name_prefix="bfs-index-load")
        index = pool.submit(repo.load_index)
        pool.shutdown(wait=False)  # not `with`: that would wait for the load right here
        ref, _, sub = (args.snapshot or "").partition(":")
        found = repo.find_snapshot(ref) if args.snapshot else None  # a bad one fails before mounting
        importer.join()
        try:
            from backupfs.mount import lifecycle
            from backupfs.mount.api import VfsOptions
            from backupfs.mount.layout import snapshot_root
        except ImportError as exc:  # pyfuse3 or libfuse3 missing
            raise FuseUnavailable(f"FUSE is not available: {exc}") from exc

        root: Node | None = None
        if found is not None:
            sid, snap = found
            root = snapshot_root(b"", snap)
            if sub:
                index.result()  # the folder is looked up through the snapshot's listings
                node = lookup(repo, snap.tree, sub)
                if node.type != DIR or node.subtree is None:
                    raise UsageError(f"{sub} is not a folder in snapshot {sid[:8]}")
                root = dataclasses.replace(node, name=b"")
            what = f"snapshot {sid[:8]}{':' + sub if sub else ''}"
            one.update(snapshot_id=sid, path="/" + sub.strip("/"))

        options = lifecycle.MountOptions(
            allow_other=args.allow_other,
            vfs=VfsOptions(cache_bytes=cache_bytes, refresh_interval=args.refresh),
            root=root,
        )
        lifecycle.run(repo, mountpoint, options, ready, load_index=index.result)
    return 0


def check_mountpoint(path: str) -> str:
    """The absolute mount point, or a one-line UsageError saying what is wrong with it."""
    mnt = os.path.abspath(path)
    if not os.path.lexists(mnt):
        raise UsageError(f"mount point {path} does not exist")
    if not os.path.isdir(mnt):
        raise UsageError(f"mount point {path} is not a directory")
    if os.path.ismount(mnt):
        raise UsageError(f"mount point {path} is busy: something is already mounted there")
    try:
        if os.listdir(mnt):
            raise UsageError(f"mount point {path} is not empty")
    except PermissionError as exc:
        raise UsageError(f"mount point {path} cannot be read: {exc.strerror}") from exc
    return mnt


def check_fuse_available() -> None:
    if not os.path.exists("/dev/fuse"):
        raise FuseUnavailable(
            "FUSE is not available: /dev/fuse does not exist (load the fuse module, or give the container /dev/fuse)"
        )
    if os.geteuid() != 0:
        if shutil.which("fusermount3") is None:
            raise FuseUnavailable("FUSE is not available: fusermount3 is not installed (install the fuse3 package)")
    elif not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise FuseUnavailable("FUSE is not available: /dev/fuse cannot be opened")


def _import_quietly(name: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # the main thread imports it again and reports the error

