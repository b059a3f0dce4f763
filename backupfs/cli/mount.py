"""`backupfs mount MOUNTPOINT`: every snapshot as a read-only filesystem, in the foreground."""

from __future__ import annotations

import argparse
import logging
import re
import sys

from backupfs.cli._common import err, open_repository
from backupfs.errors import UsageError


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
    p.add_argument("--cache-size", default="64M", metavar="SIZE", help="decrypted chunks kept in memory (default 64M)")
    p.add_argument(
        "--refresh", type=float, default=3.0, metavar="SECONDS", help="how often to look for new snapshots (default 3)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what the mount does")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: trio and pyfuse3 cost ~0.2 s to import, which every other
    # command would pay, and a system without libfuse3 must still run the other commands.
    from backupfs import mount
    from backupfs.vfs import VfsOptions

    logging.basicConfig(
        stream=sys.stderr, format="backupfs: %(message)s", level=logging.INFO if args.verbose else logging.WARNING
    )
    if args.refresh <= 0:
        raise UsageError("--refresh must be positive")
    mountpoint = mount.check_mountpoint(args.mountpoint)
    mount.check_fuse_available()
    options = mount.MountOptions(
        allow_other=args.allow_other,
        vfs=VfsOptions(cache_bytes=_parse_size(args.cache_size), refresh_interval=args.refresh),
    )

    def ready() -> None:
        if not args.quiet:
            err(f"mounted at {mountpoint}; Ctrl-C or `fusermount3 -u {mountpoint}` unmounts")

    # No lock: a mount may stay up for weeks and must not stop prune; it copes with packs that
    # prune removes (index reload) and with snapshots that forget removes (they disappear).
    with open_repository(args, lock=None, load_index=False) as repo:
        mount.run(repo, mountpoint, options, ready)
    return 0


def _parse_size(text: str) -> int:
    """`64M`, `1.5G`, `512k` or a number of bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if m is None:
        raise UsageError(f"invalid size {text!r} (use e.g. 64M, 1G or a number of bytes)")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_"))
