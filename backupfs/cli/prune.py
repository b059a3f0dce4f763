"""`backupfs prune`: delete and repack packs so that only data the snapshots use remains."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable

from backupfs.cli._common import format_time, iso_time, open_repository
from backupfs.cli._output import err, human_size, print_json
from backupfs.cli._progress import Progress, prune_figures
from backupfs.errors import UsageError
from backupfs.prune.execute import Hook, execute
from backupfs.prune.locked import KINDS, Held
from backupfs.prune.options import PruneOptions, parse_max_unused, parse_repack_threshold, parse_size
from backupfs.prune.plan import PackInfo, PrunePlan, PruneStats, plan_prune
from backupfs.repository.repo import Repository

# Test-only: `BACKUPFS_TEST_CRASH_AT=<phase>` (one of prune.execute.PHASES) makes the process exit
# at once (os._exit, no cleanup, as SIGKILL would) when prune reaches that phase boundary; the
# crash tests stop prune at every one of them. Read here, so the library never looks at the
# environment.
CRASH_ENV = "BACKUPFS_TEST_CRASH_AT"
CRASH_EXIT = 99


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("prune", help="remove data that no snapshot uses")
    add_prune_args(p)
    p.add_argument("-n", "--dry-run", action="store_true", help="only print what would be deleted and repacked")
    p.set_defaults(func=run)


def add_prune_args(p: argparse.ArgumentParser) -> None:
    """Shared with `forget --prune`."""
    p.add_argument(
        "--max-unused",
        default="5%",
        metavar="LIMIT",
        help="unused space to tolerate: a share of the repository (5%%, the default), a size (100M) or "
        "'unlimited' (then no data pack is repacked, whatever --repack-threshold says)",
    )
    p.add_argument(
        "--repack-threshold",
        default="5%",
        metavar="PERCENT",
        help="also repack every data pack with at least this share unused, even within --max-unused "
        "(5%% by default, as borg compact's per-segment rule; 'off' leaves it to --max-unused alone, as restic)",
    )
    p.add_argument(
        "--max-repack-size", metavar="SIZE", help="repack at most this much (total size of the packs rewritten)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="list every pack deleted or repacked")


def prune_options(args: argparse.Namespace) -> PruneOptions:
    return PruneOptions(
        max_unused=parse_max_unused(args.max_unused),
        max_repack_size=parse_size(args.max_repack_size) if args.max_repack_size else None,
        repack_threshold=parse_repack_threshold(args.repack_threshold),
    )


def refuse_no_lock(args: argparse.Namespace) -> None:
    """Deleting without the exclusive lock could delete a running backup's packs."""
    if getattr(args, "no_lock", False) and not args.dry_run:
        raise UsageError(f"--no-lock cannot be used with {args.command}: it needs the exclusive lock (try --dry-run)")


def run(args: argparse.Namespace) -> int:
    # A dry run changes nothing, so it may run next to backups; the real thing needs them gone.
    refuse_no_lock(args)
    opts = prune_options(args)
    deletes = None if args.dry_run else "prune"
    with open_repository(
        args, lock="shared" if args.dry_run else "exclusive", load_index=False, deletes=deletes
    ) as repo:
        prune_repository(repo, args, opts, dry_run=args.dry_run)
    return 0


def prune_repository(
    repo: Repository,
    args: argparse.Namespace,
    opts: PruneOptions,
    *,
    dry_run: bool,
    ignore_snapshots: Iterable[str] = (),
) -> PruneStats:
    """Plan, print, and unless `dry_run` execute; the caller holds the lock."""
    quiet = args.quiet or args.json
    log = (lambda _m: None) if quiet else err
    plan = plan_prune(repo, opts, ignore_snapshots=ignore_snapshots, log=log)
    if dry_run or args.verbose:
        _print_packs(plan, args)
    if not dry_run:  # also when the plan is empty: execute sweeps abandoned temporary files
        with Progress(args.quiet or not plan.repack, args.json, prune_figures(plan.stats)):
            execute(plan, log=log, hook=crash_hook())
    _print_summary(plan, args, dry_run)
    return plan.stats


def crash_hook() -> Hook:
    """The test-only hook CRASH_ENV asks for: exit at that phase boundary; else do nothing."""
    crash_at = os.environ.get(CRASH_ENV)

    def hook(phase: str) -> None:
        if phase == crash_at:
            os._exit(CRASH_EXIT)

    return hook


def _print_packs(plan: PrunePlan, args: argparse.Namespace) -> None:
    if args.json or args.quiet:
        return

    def line(action: str, p: PackInfo, why: str = "") -> None:
        kind = "tree" if p.type else "data"
        used = 100 * p.used_bytes / max(1, p.blob_bytes)
        print(f"{action:7} {p.id.hex()}  {kind}  {human_size(p.size):>12}  {used:5.1f}% used{why}")

    for p in plan.delete:
        if p.size >= 0:
            line("delete", p)
        else:
            print(f"drop    {p.id.hex()}  (missing, nothing in use)")
    for p in plan.repack:
        line("repack", p, f"  ({p.reason})")
    for name in plan.unindexed:
        print(f"delete  {name}  (in no index)")
    for p in plan.reindexed:
        print(f"reindex {p.id.hex()}  (in no index, but holds data in use: listed again)")


def held_lines(held: Held) -> list[str]:
    """One line per kind of file left for later because of Object Lock: how many, and when
    they become deletable (shared with forget)."""
    out = []
    for kind, h in held.kinds.items():
        size = f", {human_size(h.size)}" if h.size else ""
        if h.latest:
            when = f"deletable from {format_time(int(h.earliest * 1e9))}"
            if h.latest > h.earliest + 60:
                when += f", all by {format_time(int(h.latest * 1e9))}"
        else:
            when = "deletable later"
        out.append(f"{h.count} {KINDS[kind]}{size} kept: under Object Lock retention, {when}")
    return out


def held_json(held: Held) -> dict[str, object]:
    """`held` as the `locked` member of a JSON summary, its times RFC 3339 as every time in JSON
    (shared with forget); {} when nothing is held."""
    if not held:
        return {}

    def when(t: float) -> str | None:
        return iso_time(int(t * 1e9)) if t and t != math.inf else None

    return {
        "locked": {
            kind: {
                "count": h.count,
                "bytes": h.size,
                "deletable_from": when(h.earliest),
                "all_deletable_from": when(h.latest),
            }
            for kind, h in held.kinds.items()
        }
    }


def _pack_json(p: PackInfo) -> dict[str, object]:
    return {
        "id": p.id.hex(),
        "type": "tree" if p.type else "data",
        "size": p.size,
        "blobs": p.count,
        "used_blobs": p.used_count,
        "used_bytes": p.used_bytes,
        **({"reason": p.reason} if p.reason else {}),
    }


def _threshold(opts: PruneOptions) -> str:
    return "off" if opts.repack_threshold is None else f"{opts.repack_threshold:g}%"


def _reasons(plan: PrunePlan) -> str:
    """'; 2 tree, 5 for --max-unused, 3 at 10% unused or more' (the kinds that occur)."""
    names = {
        "tree": "tree",
        "max-unused": "for --max-unused",
        "threshold": f"at {_threshold(plan.opts)} unused or more",
    }
    counts = {r: sum(1 for p in plan.repack if p.reason == r) for r in names}
    parts = [f"{n} {names[r]}" for r, n in counts.items() if n]
    return "; " + ", ".join(parts) if parts else ""


def _print_summary(plan: PrunePlan, args: argparse.Namespace, dry_run: bool) -> None:
    s = plan.stats
    if args.json:
        print_json(
            {
                "message_type": "prune",
                "dry_run": dry_run,
                **s.as_dict(),
                "max_unused": str(plan.opts.max_unused),
                "repack_threshold": _threshold(plan.opts),
                "delete": [_pack_json(p) for p in plan.delete],
                "repack": [_pack_json(p) for p in plan.repack],
                "unindexed": plan.unindexed,
                "reindexed": [p.id.hex() for p in plan.reindexed],
                **held_json(plan.held),
            }
        )
        return
    if args.quiet:
        return
    pct = 100 * s.unused_bytes / max(1, s.used_bytes + s.unused_bytes)
    pct_after = 100 * s.unused_after / max(1, s.used_bytes + s.unused_after)
    rows = [
        ("repository", f"{s.packs} packs, {human_size(s.size)}, {s.blobs} blobs, {s.snapshots} snapshots"),
        ("in use", f"{s.used_blobs} blobs, {human_size(s.used_bytes)}"),
        ("unused", f"{s.unused_blobs} blobs, {human_size(s.unused_bytes)} ({pct:.1f}%)"),
        ("delete", f"{s.delete_packs} packs, {human_size(s.delete_bytes)} (nothing in use)"),
        (
            "repack",
            f"{s.repack_packs} packs, {human_size(s.repack_bytes)} (rewrites {human_size(s.repack_used_bytes)} in use"
            + _reasons(plan)
            + ")",
        ),
    ]
    if s.unindexed_packs:
        rows.append(("unindexed", f"{s.unindexed_packs} packs, {human_size(s.unindexed_bytes)} (left by killed runs)"))
    if s.reindexed_packs:
        rows.append(("reindexed", f"{s.reindexed_packs} packs in no index hold data in use: listed again"))
    if s.duplicate_blobs:
        checked = f"; {s.verified_copies} read to keep a good one" if s.verified_copies else ""
        damaged = f", {s.damaged_copies} of them damaged" if s.damaged_copies else ""
        rows.append(("duplicates", f"{s.duplicate_blobs} extra copies of blobs{checked}{damaged}"))
    if s.missing_packs:
        rows.append(("missing", f"{s.missing_packs} indexed packs are gone (nothing in use): dropped from the index"))
    rows += [("locked", line) for line in held_lines(plan.held)]
    rows.append(
        (
            "after prune",
            f"{human_size(s.size_after)}, {human_size(s.unused_after)} unused ({pct_after:.1f}%, "
            f"limit {plan.opts.max_unused}, repack threshold {_threshold(plan.opts)})",
        )
    )
    width = max(len(k) for k, _v in rows) + 1
    for k, v in rows:
        print(f"{k + ':':{width}} {v}")
    if plan.nothing_to_do:
        print("nothing to do")
    elif dry_run:
        print(f"would free {human_size(s.freed_bytes)} (dry run: nothing was changed)")
    else:
        print(
            f"freed {human_size(s.freed_bytes)}; wrote {s.packs_written} packs ({human_size(s.bytes_written)}) "
            f"and {s.index_files_written} index files"
        )
