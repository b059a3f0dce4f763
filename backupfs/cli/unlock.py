"""`backupfs unlock`: remove stale locks (or all locks with --remove-all)."""

from __future__ import annotations

import argparse

from backupfs.cli._common import open_repository
from backupfs.cli._output import err, print_json


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("unlock", help="remove stale locks")
    p.add_argument("--remove-all", action="store_true", help="remove all locks, even those of running processes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_repository(args, lock=None, load_index=False) as repo:
        n = repo.unlock_stale(remove_all=args.remove_all)
    if args.json:
        print_json({"message_type": "unlock", "removed": n})
    elif not args.quiet:
        err(f"removed {n} lock{'s' if n != 1 else ''}")
    return 0
