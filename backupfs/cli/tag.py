"""`backupfs tag SNAPSHOT... --add/--remove/--set TAG`: change tags, as `restic tag`."""

from __future__ import annotations

import argparse

from backupfs.cli._common import open_repository
from backupfs.cli._output import err, print_json
from backupfs.errors import UsageError
from backupfs.format.snapshot import Snapshot
from backupfs.ops.tag import TagChange, new_tags, retag

DESCRIPTION = """\
Adds, removes or sets the tags of snapshots. Tags are part of a snapshot's file, so each changed
snapshot gets a new file and a new id (its contents and time stay); the old file is then removed.
Through an append-only server (`serve --append-only`) the old file cannot be removed: it stays,
and backupfs hides it because the new one records that it replaces it (restic shows both).
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "tag",
        help="add, remove or set the tags of snapshots",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("snapshots", nargs="+", metavar="SNAPSHOT", help="snapshot ids, unique prefixes or 'latest'")
    p.add_argument("--add", action="append", default=[], metavar="TAG", help="add TAG (repeatable, or a,b)")
    p.add_argument("--remove", action="append", default=[], metavar="TAG", help="remove TAG (repeatable, or a,b)")
    p.add_argument(
        "--set", action="append", metavar="TAG", help="replace all tags by TAG (repeatable, or a,b; '' for none)"
    )
    p.set_defaults(func=run)


def _split(values: list[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    if args.set is not None and (args.add or args.remove):
        raise UsageError("--set cannot be combined with --add or --remove")
    if args.set is None and not args.add and not args.remove:
        raise UsageError("nothing to do: give --add, --remove or --set")
    add, remove = _split(args.add), _split(args.remove)
    set_ = _split(args.set) if args.set is not None else None
    changes: list[TagChange] = []
    with open_repository(args, lock="exclusive", load_index=False) as repo:
        everything = repo.list_snapshots(include_replaced=True)
        hidden = {r.hex() for _sid, s in everything for r in s.replaces}
        # the current version of each hidden one (a visible snapshot lists its whole chain)
        replaced_by = {r.hex(): sid for sid, s in everything if sid not in hidden for r in s.replaces}
        chosen: dict[str, Snapshot] = {}
        for ref in args.snapshots:
            sid, snap = repo.find_snapshot(ref, [p for p in everything if p[0] not in hidden])
            if sid in hidden:
                current = replaced_by.get(sid, "?")
                raise UsageError(f"snapshot {sid[:8]} was replaced by {current[:8]} (its tags changed): tag that one")
            chosen[sid] = snap
        for sid, snap in chosen.items():
            change = retag(repo, sid, snap, new_tags(snap.tags, add, remove, set_))
            if change is not None:
                changes.append(change)
                if not args.json and not args.quiet:
                    print(f"snapshot {sid[:8]} -> {change.new_id[:8]}: tags {','.join(change.tags) or '(none)'}")
    kept = [c.old_id for c in changes if not c.old_removed]
    if args.json:
        print_json(
            {
                "message_type": "summary",
                "changed_snapshots": len(changes),
                "changes": [
                    {
                        "old_snapshot_id": c.old_id,
                        "new_snapshot_id": c.new_id,
                        "tags": c.tags,
                        "old_removed": c.old_removed,
                    }
                    for c in changes
                ],
            }
        )
    elif not args.quiet:
        print(f"modified {len(changes)} snapshots" if changes else "no snapshots were modified")
    if kept and not args.json:
        err(
            f"note: the append-only server keeps the {len(kept)} old snapshot file(s); "
            "they are hidden, and `forget` on the server removes them with the snapshots that replace them"
        )
    return 0
