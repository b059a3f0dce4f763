"""`backupfs cache [--cleanup]`: the local caches of repositories, as `restic cache`."""

from __future__ import annotations

import argparse

from backupfs.cli._args import days
from backupfs.cli._common import cache_dir, format_time, iso_time
from backupfs.cli._output import err, human_size, print_json
from backupfs.errors import UsageError
from backupfs.repository.cache import MAX_AGE, is_old, list_caches, remove

DESCRIPTION = """\
Lists the local caches (one folder per repository under the cache folder: ~/.cache/backupfs, or
$XDG_CACHE_HOME/backupfs, --cache-dir, BACKUPFS_CACHE_DIR), when each was last used and its size.
A cache is only a copy of repository metadata: removing one costs the next command a slower
start. Caches of repositories not opened for 30 days are removed automatically whenever a
repository is opened; --cleanup does it now (with --max-age for another age). The cache folder
holds a CACHEDIR.TAG, so `backup --exclude-caches` (and tar, borg, restic) skip it. No repository
or password is needed.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "cache",
        help="list or clean up the local caches of repositories",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cleanup", action="store_true", help="remove the caches not used for --max-age")
    p.add_argument(
        "--max-age",
        type=days,
        default=MAX_AGE,
        metavar="AGE",
        help="a cache unused this long is old (default 30 days; 30, 12h, 90d: a bare number is days)",
    )
    p.add_argument("--no-size", action="store_true", help="do not add up the sizes (faster on large caches)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = cache_dir(args)
    if root is None:
        raise UsageError("--no-cache: there is no cache to list")
    caches = list_caches(root, sizes=not args.no_size)
    removed = [c for c in caches if args.cleanup and is_old(c, args.max_age) and remove(c)]
    if args.json:
        print_json(
            {
                "message_type": "cache",
                "cache_dir": root,
                "caches": [
                    {
                        "repository_id": c.repo_id,
                        "path": c.path,
                        "last_used": iso_time(c.last_used_ns),
                        "old": is_old(c, args.max_age),
                        "size": c.size,
                        "removed": c in removed,
                    }
                    for c in caches
                ],
                "removed": len(removed),
            }
        )
        return 0
    if not caches:
        print(f"no caches in {root}")
        return 0
    print(f"caches in {root}:")
    print(f"{'Repository ID':<14} {'Last used':<19}  {'Old':<4} {'Size':>12}")
    for c in caches:
        size = human_size(c.size) if c.size is not None else "-"
        state = "removed" if c in removed else ("yes" if is_old(c, args.max_age) else "")
        print(f"{c.repo_id[:10]:<14} {format_time(c.last_used_ns):<19}  {state:<4} {size:>12}")
    old = [c for c in caches if is_old(c, args.max_age) and c not in removed]
    if removed:
        err(f"removed {len(removed)} old caches")
    elif old:
        err(f"{len(old)} caches are old: `backupfs cache --cleanup` removes them")
    return 0
