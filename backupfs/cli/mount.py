"""`backupfs mount MOUNTPOINT`: every snapshot as a read-only filesystem, in the foreground."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from backupfs.cli._common import open_repository
from backupfs.cli._output import err, print_json
from backupfs.cli._quote import EscapingFilter
from backupfs.errors import BackupfsError, UsageError


class FuseUnavailable(BackupfsError):
    """The kernel or the system cannot provide FUSE here."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "mount",
        help="mount the repository as a read-only filesystem",
        description="Serves every snapshot under MOUNTPOINT until Ctrl-C, SIGTERM or `fusermount3 -u MOUNTPOINT`.",
    )
    p.add_argument("mountpoint", help="an existing empty directory")
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
    cache_bytes = _parse_size(args.cache_size)
    mountpoint = check_mountpoint(args.mountpoint)
    check_fuse_available()
    # trio and pyfuse3 take ~0.2 s to import: not at the top, so that other commands do not pay
    # for them (and run where libfuse3 is missing), and in a thread, so that the import overlaps
    # the password's key derivation (which releases the GIL) instead of delaying the mount.
    importer = threading.Thread(target=_import_quietly, args=("backupfs.mount.lifecycle",), daemon=True)
    importer.start()

    def ready() -> None:
        logging.getLogger(__name__).info("mounted")
        if args.json:  # a script waits for this line before it uses the mount
            print_json({"message_type": "mounted", "mountpoint": mountpoint})
        elif not args.quiet:
            err(f"mounted at {mountpoint}; Ctrl-C or `fusermount3 -u {mountpoint}` unmounts")

    # No lock: a mount may stay up for weeks and must not stop prune; it copes with packs that
    # prune removes (index reload) and with snapshots that forget removes (they disappear).
    with open_repository(args, lock=None, load_index=False) as repo:
        # The index loads while the imports finish (this thread would only wait for them): the
        # first `ls` inside a snapshot needs it, and it used to start only once mounted.
        pool = ThreadPoolExecutor(1, thread_name_prefix="bfs-index-load")
        index = pool.submit(repo.load_index)
        pool.shutdown(wait=False)  # not `with`: that would wait for the load right here
        importer.join()
        try:
            from backupfs.mount import lifecycle
            from backupfs.mount.api import VfsOptions
        except ImportError as exc:  # pyfuse3 or libfuse3 missing
            raise FuseUnavailable(f"FUSE is not available: {exc}") from exc

        options = lifecycle.MountOptions(
            allow_other=args.allow_other, vfs=VfsOptions(cache_bytes=cache_bytes, refresh_interval=args.refresh)
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


def _parse_size(text: str) -> int:
    """`64M`, `1.5G`, `512k` or a number of bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if m is None:
        raise UsageError(f"invalid size {text!r} (use e.g. 64M, 1G or a number of bytes)")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_"))
