"""`backupfs snapshots`: list snapshots."""

from __future__ import annotations

import argparse

from backupfs.cli._common import format_time, iso_time, open_repository
from backupfs.cli._output import err, human_size, print_json
from backupfs.cli._quote import escape
from backupfs.errors import IntegrityError
from backupfs.format.snapshot import Snapshot
from backupfs.ops.drillsample import load_history


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("snapshots", help="list snapshots")
    add_filter_args(p)
    p.add_argument("--latest", type=int, metavar="N", help="only the newest N snapshots per host and paths")
    p.set_defaults(func=run)


def add_filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", action="append", default=[], help="only snapshots of this host (repeatable)")
    p.add_argument("--tag", action="append", default=[], help="only snapshots with these tags (a,b = both)")
    p.add_argument("--path", action="append", default=[], help="only snapshots including this path")


def matches(snap: Snapshot, args: argparse.Namespace) -> bool:
    if args.host and snap.host not in args.host:
        return False
    if args.tag and not any(set(t.split(",")) <= set(snap.tags) for t in args.tag):
        return False
    return not (args.path and not set(args.path) <= set(snap.paths))


def snapshot_json(sid: str, snap: Snapshot, drills: dict[bytes, tuple[int, bool]] | None = None) -> dict[str, object]:
    """`drills` (History.by_snapshot) adds when the snapshot was last verified, if it was."""
    out: dict[str, object] = {
        "id": sid,
        "short_id": sid[:8],
        "time": iso_time(snap.time_ns),
        "hostname": snap.host,
        "username": snap.user,
        "uid": snap.uid,
        "gid": snap.gid,
        "paths": snap.paths,
        "tags": snap.tags,
        "tree": snap.tree.hex(),
        "parent": snap.parent.hex() if snap.parent else None,
        "excludes": snap.excludes,
        "summary": snap.summary,
        "program_version": snap.program,
        **({"repaired": snap.repaired.hex()} if snap.repaired else {}),
    }
    if drills is not None:  # the newest restore drill that sampled files of it (format.md 14)
        verified = drills.get(bytes.fromhex(sid))
        out["last_verified"] = {"time": iso_time(verified[0]), "ok": verified[1]} if verified else None
    return out


def summary_count(summary: dict[str, object], key: str) -> int | None:
    """A count from a snapshot's summary, or None where it is missing or absurd: the summary is
    only ever shown, and a damaged or forged one must not stop a listing."""
    value = summary.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63 else None


def run(args: argparse.Namespace) -> int:
    damaged: list[str] = []

    def report(name: str, exc: IntegrityError) -> None:
        damaged.append(name)
        err(f"error: {exc}")

    with open_repository(args, lock="shared", load_index=False) as repo:
        snaps = [(sid, s) for sid, s in repo.list_snapshots(on_damaged=report) if matches(s, args)]
        drills = load_history(repo, lambda m: err(f"warning: {m}")).by_snapshot()
    if args.latest:
        groups: dict[tuple[str, tuple[str, ...]], list[tuple[str, Snapshot]]] = {}
        for sid, s in snaps:
            groups.setdefault((s.host, tuple(sorted(s.paths))), []).append((sid, s))
        snaps = sorted((p for g in groups.values() for p in g[-args.latest :]), key=lambda p: (p[1].time_ns, p[0]))
    if args.json:
        print_json([snapshot_json(sid, s, drills) for sid, s in snaps])
        return _exit_code(damaged)
    rows = [
        (
            sid[:8],
            format_time(s.time_ns),
            escape(s.host),
            escape(",".join(s.tags)),
            escape(", ".join(s.paths)),
            human_size(summary_count(s.summary, "total_bytes_processed") or 0),
            _verified(drills.get(bytes.fromhex(sid))),
        )
        for sid, s in snaps
    ]
    header = ("ID", "Time", "Host", "Tags", "Paths", "Size", "Verified")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print("-" * len(line))
    print(f"{len(rows)} snapshots")
    return _exit_code(damaged)


def _verified(drill: tuple[int, bool] | None) -> str:
    if drill is None:
        return "-"
    return format_time(drill[0]) + ("" if drill[1] else " FAILED")


def _exit_code(damaged: list[str]) -> int:
    """The readable snapshots are listed; the damaged ones make it an integrity error (exit 4)."""
    if damaged:
        raise IntegrityError(f"{len(damaged)} snapshot file{'s' if len(damaged) > 1 else ''} could not be read")
    return 0
