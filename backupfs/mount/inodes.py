"""The inode table: one typed class per kind of entry, derived numbers, the kernel's lookup counts.

Inode numbers are derived, not allocated: an entry's number is a 128-bit hash of an identity key
(`keys`: its parent's number and its name, and more for some kinds), split into the number and a
check value that tells a genuine collision from the same entry looked
up again. Numbers therefore stay the same while mounted even though the table drops what the
kernel has forgotten, which keeps memory bounded on trees of any size.

An entry costs memory for as long as the kernel holds it, so each kind keeps only what it needs
(slots, no per-entry dict): a file of a snapshot keeps the id of the listing that holds it, not
its ~600-byte node, which is looked up again when needed.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from collections.abc import Sequence

from backupfs.errors import BackupfsError
from backupfs.format.tree import REPAIRED, Listing, Node
from backupfs.mount.api import FsError
from backupfs.mount.keys import hash_ino
from backupfs.mount.model import VersionSet

log = logging.getLogger(__name__)

ROOT_INO = 1
SNAPSHOTS_INO, IDS_INO, HOSTS_INO, TAGS_INO, VERSIONS_INO = 2, 3, 4, 5, 6
LAST_FIXED_INO = 6
_MAX_REPORTED = 10_000  # (inode, object) pairs remembered as logged; then the log may repeat
_MAX_LOGGED_PER_FOLDER = 100  # entries of one hostile listing named in the log; then a count


@dataclasses.dataclass(slots=True, eq=False)
class Inode:
    """One entry of the table. `refs` is the kernel's lookup count; at 0 the entry goes."""

    ino: int
    check: int  # the other half of the hash: tells a collision from the same entry
    parent: int
    name: bytes
    refs: int = dataclasses.field(default=0, init=False)


@dataclasses.dataclass(slots=True, eq=False)
class LayoutDir(Inode):
    """A fixed folder of the layout: the root, snapshots/, ids/, hosts/ or tags/."""


@dataclasses.dataclass(slots=True, eq=False)
class GroupDir(Inode):
    """hosts/<host> or tags/<tag> (the group's name is the entry's)."""

    is_tag: bool


@dataclasses.dataclass(slots=True, eq=False)
class LatestLink(Inode):
    """A `latest` symlink; a new target makes a new entry."""

    target: bytes


@dataclasses.dataclass(slots=True, eq=False)
class TreeDir(Inode):
    """A folder of a snapshot tree, or a snapshot's root folder (then `root` is its own number)."""

    node: Node
    root: int  # the snapshot root folder this one lies in


@dataclasses.dataclass(slots=True, eq=False)
class TreeEntry(Inode):
    """Any other entry of a snapshot tree. Files are most of a tree: it keeps only the id of
    the listing that holds its node, where `name` finds the node again."""

    tree_id: bytes
    root: int


@dataclasses.dataclass(slots=True, eq=False)
class VersionsDir(Inode):
    """versions/ (its `state` is None: made from the current snapshot set) or a folder in it."""

    state: VersionSet | None


@dataclasses.dataclass(slots=True, eq=False)
class VersionEntry(Inode):
    """One distinct content a path had, under versions/<path>/, named by its first snapshot."""

    node: Node


class InodeTable:
    """What the kernel holds: an entry is added when a lookup or an accepted readdir entry
    tells the kernel about it, and removed when `forget` brings its count to 0. With `root`,
    the mount's root is that folder of a snapshot (`mount MNT SNAP`), not the layout's."""

    def __init__(self, root: Node | None = None) -> None:
        self._inodes: dict[int, Inode] = {}
        fixed = (
            (ROOT_INO, b""),
            (SNAPSHOTS_INO, b"snapshots"),
            (IDS_INO, b"ids"),
            (HOSTS_INO, b"hosts"),
            (TAGS_INO, b"tags"),
        )
        for ino, name in fixed:
            self._inodes[ino] = LayoutDir(ino, 0, ROOT_INO, name)
        self._inodes[VERSIONS_INO] = VersionsDir(VERSIONS_INO, 0, ROOT_INO, b"versions", None)
        if root is not None:  # the layout's other folders stay in the table, out of reach
            self._inodes[ROOT_INO] = TreeDir(ROOT_INO, 0, ROOT_INO, b"", root, ROOT_INO)

    def __len__(self) -> int:
        return len(self._inodes)

    def slot(self, key: bytes) -> tuple[int, int, Inode | None]:
        """(number, check) for an identity key, and the live entry that has them, if any.
        Without one, the caller makes the entry; `ref` puts it in the table once the kernel
        has been told about it. A 63-bit collision with another live entry probes on."""
        ino, check = hash_ino(key)
        salt = 0
        while (cur := self._inodes.get(ino)) is not None:
            if cur.check == check:
                return ino, check, cur
            salt += 1
            ino, _ = hash_ino(key, salt)
        return ino, check, None

    def ref(self, rec: Inode) -> None:
        cur = self._inodes.setdefault(rec.ino, rec)
        cur.refs += 1

    def forget(self, items: Sequence[tuple[int, int]]) -> None:
        for ino, n in items:
            rec = self._inodes.get(ino)
            if rec is None:
                continue
            rec.refs -= n
            if rec.refs <= 0 and ino > LAST_FIXED_INO:
                del self._inodes[ino]

    def get(self, ino: int) -> Inode:
        rec = self._inodes.get(ino)
        if rec is None:
            raise FsError(errno.ESTALE)
        return rec

    def find(self, ino: int) -> Inode | None:
        return self._inodes.get(ino)

    def holds(self, rec: Inode) -> bool:
        """Whether the kernel knows this very entry."""
        return self._inodes.get(rec.ino) is rec

    def path(self, rec: Inode) -> str:
        """The entry's path in the mount, for messages (a hardlink shows its first name)."""
        parts: list[bytes] = []
        cur: Inode | None = rec
        while cur is not None and cur.ino != ROOT_INO:
            parts.append(cur.name)
            cur = self._inodes.get(cur.parent)
        return "/" + os.fsdecode(b"/".join(reversed(parts)))


class DamageLog:
    """Logs a damaged or missing object once per path, not on every retry of the kernel."""

    def __init__(self, table: InodeTable) -> None:
        self._table = table
        self._reported: set[tuple[int, bytes]] = set()

    def report(self, rec: Inode, object_id: bytes, msg: str) -> None:
        key = (rec.ino, object_id)
        if key in self._reported:
            return
        if len(self._reported) > _MAX_REPORTED:
            self._reported.clear()
        self._reported.add(key)
        log.error("%s: %s", self._table.path(rec), msg)

    def report_listing(self, rec: Inode, tree_id: bytes, listing: Listing) -> None:
        """Logs once per folder what the reader rules did to its entries (format.md 9): each
        entry left out or unreadable as an error, each value shown repaired as a warning."""
        key = (rec.ino, b"entries" + tree_id)
        if not listing.problems or key in self._reported:
            return
        if len(self._reported) > _MAX_REPORTED:
            self._reported.clear()
        self._reported.add(key)
        folder = self._table.path(rec)
        for problem in listing.problems[:_MAX_LOGGED_PER_FOLDER]:
            log.log(logging.WARNING if problem.kind == REPAIRED else logging.ERROR, "%s", problem.text(folder))
        if len(listing.problems) > _MAX_LOGGED_PER_FOLDER:
            more = len(listing.problems) - _MAX_LOGGED_PER_FOLDER
            log.error("%s: %d more entries left out, repaired or unreadable (`backupfs check` lists all)", folder, more)


def describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, BackupfsError) else f"{type(exc).__name__}: {exc}"
