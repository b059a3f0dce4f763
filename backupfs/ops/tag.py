"""Changing a snapshot's tags (`backupfs tag`): a new snapshot file, then the old one goes.

A snapshot file is named by the hash of its bytes, so new tags mean a new file. It is written
first and records, in `replaces`, the ids of every earlier version of this snapshot; only then is
the old file removed (a crash in between leaves both, and readers show only the new one).
Through an append-only server nothing can be removed: the old file stays, hidden from every
listing by the new one (format.md 10), as restic leaves both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from backupfs.format.snapshot import Snapshot
from backupfs.repository.repo import Repository


@dataclasses.dataclass(frozen=True, slots=True)
class TagChange:
    old_id: str
    new_id: str
    tags: list[str]
    old_removed: bool  # False through an append-only server: the old file stays, hidden


def new_tags(tags: Sequence[str], add: Sequence[str], remove: Sequence[str], set_: Sequence[str] | None) -> list[str]:
    """restic's rules: --set replaces all (an empty --set clears them), else add then remove;
    the order of first appearance is kept and duplicates dropped."""
    if set_ is not None:
        return list(dict.fromkeys(t for t in set_ if t))
    out = list(dict.fromkeys([*tags, *add]))
    return [t for t in out if t not in set(remove)]


def retag(repo: Repository, sid: str, snap: Snapshot, tags: list[str]) -> TagChange | None:
    """Saves `snap` with `tags` (None if they are its tags already) and removes the old file(s)."""
    if tags == snap.tags:
        return None
    old = bytes.fromhex(sid)
    new = dataclasses.replace(
        snap,
        tags=tags,
        original=snap.original or old,  # what copy recognises it by, as restic
        replaces=[old, *(r for r in snap.replaces if r != old)],
    )
    new_id = repo.save_snapshot(new)
    removable = not repo.storage_info().append_only
    if removable:
        repo.remove_snapshot(sid, snap)
    return TagChange(sid, new_id, tags, removable)
