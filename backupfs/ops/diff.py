"""Comparing two trees (`backupfs diff`): what was added, removed or changed, and how many bytes.

Equal subtree ids mean equal folders (a tree's id is the keyed hash of its listing, and the listing
holds its subfolders' ids), so a folder whose id is the same on both sides is skipped without being
read: the cost is the size of the change, not of the snapshots. The byte summary follows restic's:
the chunks and listings referenced on one side only, among the entries compared. A chunk that a
changed entry shares with an unchanged folder of the other side therefore still counts (finding it
would mean reading the unchanged folders).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from backupfs.format.tree import DIR, FILE, Node
from backupfs.repository.repo import Repository

# What "metadata" means for `U`: what a user set or sees. atime changes by merely reading (the
# backup itself reads), and ctime, inode, device and link count change with any rename or copy.
METADATA_FIELDS = ("mode", "uid", "gid", "user", "group", "mtime_ns", "xattrs")
# Equal in these and different in content: the file was read again (`--force`) and its bytes
# differ though nothing touched it, which is bit rot (restic's `?`).
UNTOUCHED_FIELDS = ("mtime_ns", "ctime_ns", "size", "inode")

ADDED, REMOVED = "+", "-"


@dataclasses.dataclass(frozen=True, slots=True)
class _Where:
    """An entry's place: its name and its folder's place. The walk keeps one per open folder,
    and makes a path only for the entry it reports: a walk 10,000 levels deep then holds
    O(depth) bytes of names, not O(depth^2) of paths."""

    parent: _Where | None
    name: bytes  # the top one's: its whole path

    def path(self) -> bytes:
        names: list[bytes] = []
        where: _Where | None = self
        while where is not None:
            names.append(where.name)
            where = where.parent
        return b"/".join(reversed(names))

CONTENT, METADATA, TYPE, BITROT = "M", "U", "T", "?"


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One entry that differs. `modifier` is restic's: `+`, `-`, or `T`, `M`, `U`, `?` combined."""

    path: bytes
    modifier: str
    old: Node | None
    new: Node | None

    @property
    def node(self) -> Node:
        node = self.new or self.old
        assert node is not None
        return node


@dataclasses.dataclass(slots=True)
class SideStats:
    files: int = 0
    dirs: int = 0
    others: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    bytes: int = 0

    def count(self, node: Node) -> None:
        if node.type == FILE:
            self.files += 1
        elif node.type == DIR:
            self.dirs += 1
        else:
            self.others += 1


@dataclasses.dataclass(slots=True)
class DiffStats:
    added: SideStats = dataclasses.field(default_factory=SideStats)
    removed: SideStats = dataclasses.field(default_factory=SideStats)
    changed_files: int = 0  # content changed (files; symlinks whose target changed, devices)
    metadata_changed: int = 0  # entries whose metadata alone changed (shown with --metadata)
    type_changed: int = 0


class Differ:
    """`changes()` yields the differences depth-first, each folder before its contents; `stats` is
    complete once it is exhausted. `metadata` also yields metadata-only changes (restic's --metadata)."""

    def __init__(self, repo: Repository, metadata: bool = False) -> None:
        self.repo = repo
        self.metadata = metadata
        self.stats = DiffStats()
        self._before: dict[bytes, bool] = {}  # blob id -> is a tree; in the older side's compared entries
        self._after: dict[bytes, bool] = {}

    def changes(self, old: Node | None, new: Node | None, path: bytes = b"") -> Iterator[Change]:
        """Differences between two entries (folders, usually the roots), at `path`."""
        _blobs(old, self._before)
        _blobs(new, self._after)
        stack: list[Iterator[tuple[_Where, Node | None, Node | None]]] = []  # one listing per level
        top = _Where(None, path)
        if old is not None and new is not None and old.type == DIR and new.type == DIR:
            if old.subtree != new.subtree:
                stack.append(self._pairs(top, old.subtree, new.subtree))
        else:
            yield from self._entry(top, old, new, stack)
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
            else:
                yield from self._entry(*item, stack)
        self._count_blobs()

    def _pairs(
        self, folder: _Where, old_tree: bytes | None, new_tree: bytes | None
    ) -> Iterator[tuple[_Where, Node | None, Node | None]]:
        """The entries of two listings by name; a listing is read only when its turn comes."""
        olds = {n.name: n for n in self.repo.load_tree(old_tree)} if old_tree is not None else {}
        news = {n.name: n for n in self.repo.load_tree(new_tree)} if new_tree is not None else {}
        for name in sorted(olds.keys() | news.keys()):
            yield _Where(folder, name), olds.get(name), news.get(name)

    def _entry(
        self,
        where: _Where,
        old: Node | None,
        new: Node | None,
        stack: list[Iterator[tuple[_Where, Node | None, Node | None]]],
    ) -> Iterator[Change]:
        _blobs(old, self._before)
        _blobs(new, self._after)
        if old is None and new is None:
            return
        if old is None or new is None:
            node = new or old
            assert node is not None
            side = self.stats.added if old is None else self.stats.removed
            side.count(node)
            yield Change(where.path(), ADDED if old is None else REMOVED, old, new)
            if node.type == DIR and node.subtree is not None:
                stack.append(
                    self._pairs(where, None, node.subtree) if old is None else self._pairs(where, node.subtree, None)
                )
            return
        modifier = ""
        if old.type != new.type:
            modifier += TYPE
            self.stats.type_changed += 1
        elif _content_differs(old, new):
            modifier += CONTENT
            self.stats.changed_files += 1
            if old.type == FILE and all(getattr(old, f) == getattr(new, f) for f in UNTOUCHED_FIELDS):
                modifier += BITROT
        elif any(getattr(old, f) != getattr(new, f) for f in METADATA_FIELDS):
            self.stats.metadata_changed += 1
            if self.metadata:
                modifier += METADATA
        if modifier:
            yield Change(where.path(), modifier, old, new)
        old_dir = old.subtree if old.type == DIR else None
        new_dir = new.subtree if new.type == DIR else None
        if old_dir != new_dir:  # equal ids: equal folders, never read
            stack.append(self._pairs(where, old_dir, new_dir))  # a side that is no folder: all added/removed

    def _count_blobs(self) -> None:
        both = self._before.keys() & self._after.keys()
        for blobs, side in ((self._before, self.stats.removed), (self._after, self.stats.added)):
            for blob_id, is_tree in blobs.items():
                if blob_id in both:
                    continue
                if is_tree:
                    side.tree_blobs += 1
                else:
                    side.data_blobs += 1
                loc = self.repo.index.lookup(blob_id)
                if loc is not None:
                    side.bytes += loc.raw_length


def _content_differs(old: Node, new: Node) -> bool:
    if old.type == FILE:
        return old.content != new.content or old.size != new.size
    return old.link_target != new.link_target or old.rdev != new.rdev


def _blobs(node: Node | None, into: dict[bytes, bool]) -> None:
    if node is None:
        return
    if node.type == DIR:
        if node.subtree is not None:
            into[node.subtree] = True
    elif node.content:
        for _offset, blob_id in node.content:
            into[blob_id] = False
