"""The mount's pure model: the snapshot set as the mount names it, and what a versions/ folder shows.

No trio, no I/O, so the rules are tested without a repository or a loop. A `Model` (time names,
short ids, host and tag groups) is immutable; the mount builds a new one from the previous one
whenever the snapshot set changes, which keeps every name a snapshot was once given for as long as
it exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, NAME_MAX, Node
from backupfs.mount.keys import content_key

SHORT_ID_DIGITS = 8  # ids/<short id>: as restic shows them, longer only where two ids share them
TIME_NAME_FORMAT = "%Y-%m-%dT%H:%M:%S"  # snapshots/<local time>
_LONG_NAME_MARK = b"~"  # a host or tag name cut to NAME_MAX: then its hash follows
_LONG_NAME_HASH_BYTES = 8


@dataclasses.dataclass(frozen=True, slots=True)
class Snap:
    sid: str
    snap: Snapshot
    name: bytes  # unique local-time name


class Model:
    """The snapshot set at one moment; replaced as a whole when the repository changes."""

    def __init__(self, snaps: list[Snap]) -> None:
        self.snaps = snaps  # oldest first
        self.by_name = {s.name: s for s in snaps}
        self.by_short = short_ids(snaps)
        self.hosts: dict[bytes, list[Snap]] = {}
        self.tags: dict[bytes, list[Snap]] = {}
        for s in snaps:
            self.hosts.setdefault(safe_name(s.snap.host), []).append(s)
            for tag in dict.fromkeys(s.snap.tags):
                self.tags.setdefault(safe_name(tag), []).append(s)
        self.newest_ns = snaps[-1].snap.time_ns if snaps else 0

    @classmethod
    def build(cls, snapshots: dict[str, Snapshot], previous: Model | None = None) -> Model:
        """The model of `snapshots` (id -> snapshot), in (time, id) order. A snapshot keeps the
        name `previous` gave it; a new one gets its time name, or `-1`, `-2`, ... after it when
        that is taken, so a name never moves to another snapshot while both exist."""
        ordered = sorted(snapshots.items(), key=lambda p: (p[1].time_ns, p[0]))
        names = {s.sid: s.name for s in previous.snaps if s.sid in snapshots} if previous else {}
        taken = set(names.values())
        for sid, snap in ordered:
            if sid not in names:
                base = time_name(snap.time_ns)
                name, i = base, 1
                while name in taken:
                    name, i = b"%s-%d" % (base, i), i + 1
                names[sid] = name
                taken.add(name)
        return cls([Snap(sid, snap, names[sid]) for sid, snap in ordered])

    def group(self, is_tag: bool, name: bytes) -> list[Snap]:
        """The snapshots of hosts/<name> or tags/<name>, oldest first (empty if there is none)."""
        return (self.tags if is_tag else self.hosts).get(name, [])


def time_name(ns: int) -> bytes:
    return time.strftime(TIME_NAME_FORMAT, time.localtime(ns // 1_000_000_000)).encode()


def safe_name(text: str) -> bytes:
    """A host or tag as a file name: no '/', NUL, or dot-only names, and at most NAME_MAX bytes
    (the kernel refuses to look up a longer name: it would be listed but could not be opened).
    A longer one is cut, and ends in `~` and 16 hex digits of its hash, so that two hosts that
    differ only past the cut still get folders of their own."""
    raw = os.fsencode(text).replace(b"/", b"_").replace(b"\0", b"_")
    if raw in (b"", b".", b".."):
        return b"_" + raw
    if len(raw) <= NAME_MAX:
        return raw
    cut = NAME_MAX - len(_LONG_NAME_MARK) - 2 * _LONG_NAME_HASH_BYTES
    while cut and raw[cut] & 0xC0 == 0x80:  # not inside a UTF-8 character
        cut -= 1
    digest = hashlib.blake2b(raw, digest_size=_LONG_NAME_HASH_BYTES).hexdigest()
    return raw[:cut] + _LONG_NAME_MARK + digest.encode()


def short_ids(snaps: list[Snap]) -> dict[bytes, Snap]:
    """8-digit ids, longer where two snapshots share a prefix."""
    out: dict[bytes, Snap] = {}
    sids = sorted(s.sid for s in snaps)
    by_sid = {s.sid: s for s in snaps}
    for i, sid in enumerate(sids):
        n = SHORT_ID_DIGITS
        for other in (sids[i - 1] if i else "", sids[i + 1] if i + 1 < len(sids) else ""):
            while n < len(sid) and other[:n] == sid[:n]:
                n += 1
        out[sid[:n].encode()] = by_sid[sid]
    return out


@dataclasses.dataclass(slots=True)
class VersionSet:
    """What versions/<path> shows: the union of the folders that path ever was (their distinct
    tree ids, each with the snapshot where it first appeared), and each distinct non-folder
    content it ever had, named by the snapshot where that content first appeared. Fed the
    versions of a path oldest first."""

    trees: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    leaves: list[tuple[bytes, Node]] = dataclasses.field(default_factory=list)
    meta: Node | None = None  # the newest folder version: its owner and mode guard the folder
    seen: set[bytes] = dataclasses.field(default_factory=set)  # tree ids and content keys

    def add(self, snap_name: bytes, node: Node) -> None:
        if node.type == DIR:
            self.meta = node
            if node.subtree is not None and node.subtree not in self.seen:
                self.seen.add(node.subtree)
                self.trees.append((snap_name, node.subtree))
        else:
            key = content_key(node)
            if key not in self.seen:
                self.seen.add(key)
                self.leaves.append((snap_name, node))

    def empty(self) -> bool:
        return not self.trees and not self.leaves and self.meta is None
