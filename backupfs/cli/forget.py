"""`backupfs forget`: remove snapshots by id or by a retention policy (rules in backupfs.prune.policy)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from backupfs.backends.base import FileType
from backupfs.cli._common import format_time, open_repository
from backupfs.cli._output import print_json
from backupfs.cli._quote import escape
from backupfs.cli.prune import add_prune_args, held_json, held_lines, prune_options, prune_repository, refuse_no_lock
from backupfs.cli.snapshots import add_filter_args, snapshot_json
from backupfs.errors import UnderRetention, UsageError
from backupfs.format.snapshot import Snapshot
from backupfs.prune.locked import Held, locked_dates
from backupfs.prune.policy import (
    DEFAULT_GROUP_BY,
    GroupPlan,
    Policy,
    PolicySnapshot,
    filter_snapshots,
    parse_duration,
    parse_group_by,
    parse_keep_count,
    parse_tag_set,
    plan_forget,
)
from backupfs.repository.repo import Repository

T = TypeVar("T")


def _arg(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type: a bad value is a usage error (exit 2) with the parser's own message."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_WITHIN = ("hourly", "daily", "weekly", "monthly", "yearly")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("forget", help="remove snapshots, by id or by a retention policy")
    p.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="snapshot ids (or prefixes, or 'latest')")
    for period in _COUNTS:
        p.add_argument(f"--keep-{period}", type=_arg(parse_keep_count), metavar="N", help=f"keep N {period} snapshots")
    p.add_argument(
        "--keep-within", type=_arg(parse_duration), metavar="DURATION", help="keep everything within 2y5m7d3h"
    )
    for period in _WITHIN:
        p.add_argument(
            f"--keep-within-{period}",
            type=_arg(parse_duration),
            metavar="DURATION",
            help=f"keep {period} snapshots within DURATION of the newest",
        )
    p.add_argument(
        "--keep-tag", action="append", default=[], metavar="TAGS", help="keep snapshots with these tags (a,b = both)"
    )
    p.add_argument(
        "--group-by",
        type=_arg(parse_group_by),
        default=DEFAULT_GROUP_BY,
        metavar="FIELDS",
        help="apply the policy separately per host, paths and/or tags (default host,paths; '' for one group)",
    )
    add_filter_args(p)
    p.add_argument("-n", "--dry-run", action="store_true", help="only print what would be removed")
    p.add_argument(
        "--prune",
        action="store_true",
        help="run prune afterwards, with the prune options below (--max-unused, --repack-threshold, ...)",
    )
    add_prune_args(p)
    p.set_defaults(func=run)


def _policy(args: argparse.Namespace) -> Policy:
    return Policy(
        **{f"keep_{period}": getattr(args, f"keep_{period}") for period in _COUNTS},
        keep_within=args.keep_within,
        **{f"keep_within_{period}": getattr(args, f"keep_within_{period}") for period in _WITHIN},
        keep_tags=tuple(parse_tag_set(t) for t in args.keep_tag),
    )


def run(args: argparse.Namespace) -> int:
    refuse_no_lock(args)
    policy = _policy(args)
    if args.snapshots and not policy.is_empty():
        raise UsageError("give either snapshot ids or --keep-* options, not both")
    if args.snapshots and (args.host or args.tag or args.path):
        raise UsageError("--host, --tag and --path select snapshots for a policy; they cannot be used with ids")
    if not args.snapshots and policy.is_empty():
        raise UsageError(
            "no policy was specified, no snapshots will be removed "
            "(give snapshot ids, or --keep-last, --keep-daily, --keep-within, ... options)"
        )
    prune_opts = prune_options(args) if args.prune else None
    # restic takes an exclusive lock to forget; a dry run changes nothing and may run beside backups.
    deletes = None if args.dry_run else "forget"
    with open_repository(
        args, lock="shared" if args.dry_run else "exclusive", load_index=False, deletes=deletes
    ) as repo:
        remove = _by_id(repo, args) if args.snapshots else _by_policy(repo, args, policy)
        if prune_opts is not None:
            if not args.dry_run and not args.quiet and not args.json:
                print()
            prune_repository(repo, args, prune_opts, dry_run=args.dry_run, ignore_snapshots=remove)
    return 0


def _by_id(repo: Repository, args: argparse.Namespace) -> list[str]:
    snapshots = repo.list_snapshots()
    found = dict(repo.find_snapshot(ref, snapshots) for ref in args.snapshots)
    ids, held = _remove(repo, list(found), found, args.dry_run)
    if args.json:
        print_json({"message_type": "forget", "dry_run": args.dry_run, "removed": ids, **held_json(held)})
    elif not args.quiet:
        verb = "would remove" if args.dry_run else "removed"
        for sid in ids:
            print(f"{verb} snapshot {sid[:8]}")
        _print_held(held)
    return ids


def _by_policy(repo: Repository, args: argparse.Namespace, policy: Policy) -> list[str]:
    snaps = dict(repo.list_snapshots())
    candidates = filter_snapshots(
        (_adapt(sid, s) for sid, s in snaps.items()),
        hosts=args.host,
        tags=[parse_tag_set(t) for t in args.tag],
        paths=args.path,
    )
    plans = plan_forget(candidates, policy, args.group_by, now=datetime.now(UTC))
    remove, held = _remove(repo, [sn.id for plan in plans for sn in plan.remove], snaps, args.dry_run)
    if args.json:
        print_json(
            {
                "message_type": "forget",
                "dry_run": args.dry_run,
                "policy": policy.describe(),
                "groups": [_group_json(plan, snaps) for plan in plans],
                "removed": remove,
                **held_json(held),
            }
        )
    elif not args.quiet:
        _print_plans(plans, snaps, policy, args.dry_run, len(remove))
        _print_held(held)
    return remove


def _remove(repo: Repository, ids: list[str], snaps: dict[str, Snapshot], dry_run: bool) -> tuple[list[str], Held]:
    """Removes the snapshot files (unless `dry_run`), each with the older versions it hides (`tag`); returns those removed (or that would be)
    and what the storage keeps for now (Object Lock, format.md 13): prune must go on treating
    a snapshot that is still there as one to keep."""
    held = Held()
    locked = locked_dates(repo, FileType.SNAPSHOT, ids)
    for until in locked.values():
        held.add("snapshots", 0, until)
    removed = []
    for sid in ids:
        if sid in locked:
            continue
        if not dry_run:
            try:
                repo.remove_snapshot(sid, snaps[sid])
            except UnderRetention as exc:
                held.add("snapshots", 0, exc.until)
                continue
        removed.append(sid)
    return removed, held


def _print_held(held: Held) -> None:
    for line in held_lines(held):
        print(line)




def _adapt(sid: str, snap: Snapshot) -> PolicySnapshot:
    """The policy buckets by calendar periods of local time, as restic does."""
    when = datetime.fromtimestamp(snap.time_ns // 10**9, tz=UTC).replace(microsecond=snap.time_ns % 10**9 // 1000)
    return PolicySnapshot(sid, when.astimezone(), snap.host, tuple(snap.paths), tuple(snap.tags))


def _group_json(plan: GroupPlan[PolicySnapshot], snaps: dict[str, Snapshot]) -> dict[str, object]:
    key = plan.key
    return {
        "host": key.host,
        "paths": list(key.paths) if key.paths is not None else None,
        "tags": list(key.tags) if key.tags is not None else None,
        "keep": [snapshot_json(sn.id, snaps[sn.id]) for sn in plan.keep],
        "remove": [snapshot_json(sn.id, snaps[sn.id]) for sn in plan.remove],
        "reasons": [{"snapshot_id": d.snapshot.id, "matches": list(d.reasons)} for d in plan.decisions if d.keep],
    }


def _print_plans(
    plans: list[GroupPlan[PolicySnapshot]], snaps: dict[str, Snapshot], policy: Policy, dry_run: bool, removed: int
) -> None:
    print(f"Applying policy: {policy.describe()}")
    total_keep = total_remove = 0
    for plan in plans:
        print()
        print(f"snapshots for {escape(str(plan.key))}:")
        rows = [
            (
                sn.id[:8],
                format_time(snaps[sn.id].time_ns),
                escape(sn.host),
                escape(",".join(sn.tags)),
                "keep" if d.keep else "remove",
                ", ".join(d.reasons),
                escape(", ".join(sn.paths)),
            )
            for d in reversed(plan.decisions)  # oldest first, as `snapshots` lists them
            for sn in (d.snapshot,)
        ]
        header = ("ID", "Time", "Host", "Tags", "Action", "Reasons", "Paths")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
        print(line)
        print("-" * len(line))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        print("-" * len(line))
        print(f"keep {len(plan.keep)}, remove {len(plan.remove)} snapshots")
        total_keep += len(plan.keep)
        total_remove += len(plan.remove)
    print()
    kept_locked = total_remove - removed  # the policy would remove them, Object Lock keeps them
    later = f" ({kept_locked} of them under Object Lock: kept for now)" if kept_locked else ""
    if dry_run:
        print(f"would remove {total_remove} snapshots{later}, keep {total_keep} (dry run: nothing was changed)")
    elif kept_locked:
        print(f"removed {removed} of {total_remove} snapshots{later}, kept {total_keep}")
    else:
        print(f"removed {total_remove} snapshots, kept {total_keep}")
