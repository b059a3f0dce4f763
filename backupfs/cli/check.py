"""`backupfs check`: verify the repository's structure and, optionally, all data."""

from __future__ import annotations

import argparse

from backupfs.cli._common import open_repository
from backupfs.cli._output import err, print_json
from backupfs.cli._progress import Progress, check_figures
from backupfs.cli._quote import escape
from backupfs.errors import IntegrityError
from backupfs.ops.check import Checker, select_subset


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("check", help="check the repository for errors")
    p.add_argument("--read-data", action="store_true", help="read, decrypt and verify every pack")
    p.add_argument("--read-data-subset", metavar="N%|n/m", help="verify a sample (10%%) or a group (1/5) of packs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.read_data_subset:
        select_subset([], args.read_data_subset)  # a bad value fails now, not after the structure checks
    quiet = args.quiet or args.json
    with open_repository(args, lock="shared", load_index=False) as repo:
        checker = Checker(repo, log=(lambda _m: None) if quiet else err)
        reading = bool(args.read_data or args.read_data_subset)  # the long part: progress for it
        with Progress(args.quiet or not reading, args.json, check_figures(checker.result)):
            result = checker.run(read_data=args.read_data, subset=args.read_data_subset)
    if args.json:
        print_json(
            {
                "message_type": "summary",
                "ok": result.ok,
                "errors": [escape(e) for e in result.errors],  # they name stored paths
                "warnings": [escape(w) for w in result.warnings],
                "damaged_packs": result.damaged_packs,
                "affected": [escape(a) for a in result.affected],
                "fixes": result.fixes,
                "foreign_files": [escape(f) for f in result.foreign_files],
                "snapshots": result.snapshots,
                "trees": result.trees,
                "packs_read": result.packs_read,
            }
        )
    else:
        for w in result.warnings:
            err(f"warning: {w}")
        for a in result.affected:
            err(f"affected: {a}")
        if result.ok and not args.quiet:
            print(f"no errors were found ({result.snapshots} snapshots, {result.packs_read} packs read)")
    if not result.ok:
        raise IntegrityError(f"check found {len(result.errors)} errors")
    return 0
