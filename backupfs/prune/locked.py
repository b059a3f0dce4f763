"""What prune and forget leave for later on a repository under S3 Object Lock (format.md 13).

The storage refuses to delete a file before its retain-until date. Prune therefore plans to delete
(or repack) only packs whose date has passed, keeps the others listed in the index as they are,
and leaves unindexed packs that are still locked where they are; a refused delete of an index
file, a snapshot file, or (the storage's clock behind ours) a pack is recorded, not an error.
`Held` counts what was left, by kind, with the dates it becomes deletable.
"""

from __future__ import annotations

import dataclasses
import math

from backupfs.backends.base import FileType
from backupfs.repository.repo import Repository

__all__ = ["KINDS", "Held", "HeldKind", "locked_dates"]

# kind -> what it is, for messages
KINDS = {
    "unused": "packs with nothing in use",
    "repack": "packs to repack",
    "unindexed": "packs in no index",
    "index": "old index files",
    "snapshots": "snapshots",
}


@dataclasses.dataclass(slots=True)
class HeldKind:
    count: int = 0
    size: int = 0
    earliest: float = math.inf  # when the first becomes deletable (Unix time)
    latest: float = 0.0  # when the last does


class Held:
    """Files left for a later run because their retention has not passed."""

    def __init__(self) -> None:
        self.kinds: dict[str, HeldKind] = {}

    def add(self, kind: str, size: int, until: float | None) -> None:
        held = self.kinds.setdefault(kind, HeldKind())
        held.count += 1
        held.size += max(size, 0)
        if until is not None:
            held.earliest = min(held.earliest, until)
            held.latest = max(held.latest, until)

    def __bool__(self) -> bool:
        return bool(self.kinds)

    def as_dict(self) -> dict[str, dict[str, object]]:
        return {
            kind: {
                "count": h.count,
                "bytes": h.size,
                "deletable_from": h.earliest if h.earliest != math.inf else None,
                "all_deletable_from": h.latest or None,
            }
            for kind, h in self.kinds.items()
        }


def locked_dates(repo: Repository, ftype: FileType, names: list[str]) -> dict[str, float]:
    """Of `names`, those whose retention has not passed, with the date it does; {} on a
    repository without Object Lock."""
    if not repo.retention_on or not names:
        return {}
    return {name: until for (_t, name), until in repo.keeper().locked([(ftype, n) for n in names]).items()}
