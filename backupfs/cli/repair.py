"""`backupfs repair index|snapshots|packs`: the way back from damage `check` found (architecture.md 7).

Exit codes: 0 when the repair is done (or, with --dry-run, would be); 4 when data is lost for
good (`repair packs`: blobs no copy of which reads back; `repair snapshots`: a snapshot of which
nothing could be kept); the usual ones otherwise (2 usage, 11 locked, 12 wrong password, 13 lock
lost). Each prints what it did, and `--json` one summary line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from backupfs.backends.base import FileType
from backupfs.cli._common import open_repository
from backupfs.cli._output import err, print_json
from backupfs.cli._quote import escape
from backupfs.cli.prune import crash_hook, refuse_no_lock
from backupfs.cli.snapshots import add_filter_args, matches
from backupfs.errors import IntegrityError
from backupfs.format.snapshot import Snapshot
from backupfs.ops.repair import SnapshotRepair, repair_index, repair_packs, repair_snapshots
from backupfs.repository.repo import Repository


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "repair",
        help="repair a damaged repository (index, snapshots, packs)",
        description="Repair what `backupfs check` found damaged; check names the command for each error.",
    )
    rs = p.add_subparsers(dest="repair_command", metavar="WHAT", required=True)
    i = rs.add_parser(
        "index",
        help="rebuild the index from the packs' own headers",
        description="Rebuild the index from every pack's own header, replacing every index file (damaged "
        "ones too). Run it when check reports a damaged index file, or packs that snapshots need but no "
        "index lists. Needs the exclusive lock; safe to interrupt (run it again).",
    )
    i.add_argument("-n", "--dry-run", action="store_true", help="only say what the new index would hold")
    s = rs.add_parser(
        "snapshots",
        help="rewrite snapshots without the data that is lost",
        description="For each snapshot whose folders or files name lost or damaged data, save a new snapshot "
        "without it: a folder whose listing is lost is kept empty, a file's lost chunks become holes of zeros "
        "(its size unchanged). The new snapshot carries the tag 'repaired' and the original's id; the original "
        "is kept unless --forget. Run `repair index` first if check reports index damage; if the lost files "
        "are still on disk, a new backup is the better repair.",
    )
    s.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="snapshot ids or prefixes (default: all)")
    add_filter_args(s)
    s.add_argument("--forget", action="store_true", help="remove each original once its repaired copy is saved")
    s.add_argument("-n", "--dry-run", action="store_true", help="only print what would be dropped")
    k = rs.add_parser(
        "packs",
        help="salvage what still reads from damaged packs",
        description="Copy every blob of the given packs that still decrypts and hashes right into new packs, "
        "then remove the packs; what could not be read leaves the index, so the next backup stores it again "
        "(where the source still has it). Use the pack ids `check --read-data` prints.",
    )
    k.add_argument("packs", nargs="+", metavar="PACK", help="pack ids (at least 8 hex digits)")
    k.add_argument("-n", "--dry-run", action="store_true", help="only say what could be salvaged")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    refuse_no_lock(args)
    command = args.repair_command
    if command == "index":
        return _index(args)
    if command == "packs":
        return _packs(args)
    return _snapshots(args)


def _quiet(_msg: str) -> None:
    pass


def _log(args: argparse.Namespace) -> Callable[[str], None]:
    return _quiet if args.quiet or args.json else err


def _index(args: argparse.Namespace) -> int:
    deletes = None if args.dry_run else "repair index"
    lock = "shared" if args.dry_run else "exclusive"
    with open_repository(args, lock=lock, load_index=False, deletes=deletes) as repo:
        result = repair_index(repo, dry_run=args.dry_run, log=_log(args), hook=crash_hook())
    if args.json:
        print_json({"message_type": "repair_index", **result.as_dict()})
        return 0
    for name in result.from_old_index:
        err(
            f"warning: pack {name} has a damaged header; it is listed as the old index said "
            f"(`backupfs repair packs {name[:16]}` keeps what can be read)"
        )
    for name in result.left_out:
        err(f"warning: pack {name} cannot be read and no index lists it: nothing can use it (prune removes it)")
    if not args.quiet:
        verb = "would list" if args.dry_run else "listed"
        print(f"{verb} {result.packs} packs ({result.blobs} blobs) from their own headers")
        if result.relisted:
            print(f"{len(result.relisted)} of them were listed by no readable index before")
        if result.dropped:
            print(f"{len(result.dropped)} packs the old index listed are gone and are no longer listed")
        if result.damaged_index_files:
            print(f"{len(result.damaged_index_files)} damaged index files replaced")
        if args.dry_run:
            print("dry run: nothing was changed")
        else:
            print(f"wrote {result.index_files_written} index files, removed {result.index_files_removed} old ones")
    return 0


def _packs(args: argparse.Namespace) -> int:
    deletes = None if args.dry_run else "repair packs"
    lock = "shared" if args.dry_run else "exclusive"
    with open_repository(args, lock=lock, deletes=deletes) as repo:
        result = repair_packs(repo, args.packs, dry_run=args.dry_run, log=_log(args), hook=crash_hook())
    if args.json:
        print_json({"message_type": "repair_packs", **result.as_dict()})
    elif not args.quiet:
        verb = "would salvage" if args.dry_run else "salvaged"
        print(
            f"{verb} {result.salvaged} blobs from {len(result.packs)} packs into {result.packs_written} new packs; "
            f"{result.elsewhere} damaged blobs have a good copy elsewhere, {len(result.lost)} are lost"
        )
        if args.dry_run:
            print("dry run: nothing was changed")
    if result.lost and not args.dry_run:
        raise IntegrityError(
            f"{len(result.lost)} blobs could not be salvaged and left the index: `backupfs check` names the "
            "snapshots that used them; back up those files again (the next backup stores them anew) or run "
            "`backupfs repair snapshots`"
        )
    return 0


def _snapshots(args: argparse.Namespace) -> int:
    forget = args.forget and not args.dry_run
    with open_repository(
        args, lock="exclusive" if forget else "shared", deletes="repair snapshots --forget" if forget else None
    ) as repo:
        chosen = _select(repo, args)
        results = repair_snapshots(repo, chosen, forget=forget, dry_run=args.dry_run, log=_log(args), hook=crash_hook())
    bad = [r for r in results if r.unrepairable]
    if args.json:
        print_json(
            {
                "message_type": "repair_snapshots",
                "dry_run": args.dry_run,
                "snapshots": [_snapshot_json(r) for r in results],
            }
        )
    elif not args.quiet:
        for r in results:
            if r.unrepairable:
                print(f"snapshot {r.snapshot[:8]}: cannot be repaired: {r.unrepairable}")
            elif not r.changed:
                continue
            else:
                saved = "would be rewritten" if args.dry_run else f"saved as {r.new_id[:8] if r.new_id else '?'}"
                gone = ", original removed" if r.forgotten else ""
                print(f"snapshot {r.snapshot[:8]}: {saved}{gone}")
                for path in r.lost_folders:
                    print(f"  folder {escape(path)}: listing lost, kept empty")
                for line in r.damaged_files:
                    print(f"  file {escape(line)} (now holes of zeros)")
                for line in r.dropped_entries:
                    print(f"  left out {escape(line)}")
        changed = sum(1 for r in results if r.changed and not r.unrepairable)
        print(f"{len(results)} snapshots looked at, {changed} {'need' if args.dry_run else 'got'} a repaired copy")
        if args.dry_run:
            print("dry run: nothing was changed")
    if bad:
        raise IntegrityError(
            f"{len(bad)} snapshots cannot be repaired (e.g. {bad[0].snapshot[:8]}: {bad[0].unrepairable}); "
            f"`backupfs forget {bad[0].snapshot[:8]}` removes one"
        )
    return 0


def _snapshot_json(r: SnapshotRepair) -> dict[str, object]:
    """A snapshot is named by a key ending in `_id`, as in every other JSON document."""
    doc = r.as_dict()
    doc["snapshot_id"] = doc.pop("snapshot")
    doc["new_snapshot_id"] = doc.pop("new_id")
    return doc


def _select(repo: Repository, args: argparse.Namespace) -> list[tuple[str, Snapshot | None]]:
    """The snapshots named (or all), in time order; an unreadable one comes with None."""
    if args.snapshots:
        out: list[tuple[str, Snapshot | None]] = []
        for ref in args.snapshots:
            try:
                out.append(repo.find_snapshot(ref))
            except IntegrityError:
                names = [n for n in repo.file_names(FileType.SNAPSHOT) if n.startswith(ref.lower())]
                out.append((names[0] if names else ref, None))
        return out
    damaged: list[tuple[str, Snapshot | None]] = []

    def skip(name: str, _exc: IntegrityError) -> None:
        damaged.append((name, None))

    readable = [(sid, s) for sid, s in repo.list_snapshots(on_damaged=skip) if matches(s, args)]
    return [*damaged, *readable]
