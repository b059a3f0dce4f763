"""The snapshots' own folders: their listings, and their entries as inodes.

A folder's entry keeps its node; any other entry keeps only the id of the listing that holds it
and finds its node there again when asked (files are most of a tree, and a node costs ~600 bytes:
memory stays ~300 bytes per inode the kernel holds, and the listing is usually still cached).
Listings are read under the reader rules (format.md 9): sorted by name, each name once, each a
valid file name, so a name is found by bisection and one bad entry costs that entry only.
"""

from __future__ import annotations

import bisect
import errno

from backupfs.format.tree import DIR, FILE, Node
from backupfs.mount.api import FsError
from backupfs.mount.inodes import (
    DamageLog,
    Inode,
    InodeTable,
    TreeDir,
    TreeEntry,
    VersionEntry,
    VersionsDir,
    describe,
)
from backupfs.mount.keys import child_key, hardlink_key
from backupfs.mount.storage import Storage


class Trees:
    """Listings through the tree cache, and their entries as inodes of the table."""

    def __init__(self, table: InodeTable, storage: Storage, damage: DamageLog) -> None:
        self._table = table
        self._storage = storage
        self._damage = damage

    def child(self, parent: TreeDir, node: Node) -> Inode:
        """The entry for `node` of `parent`'s listing: the live one if the kernel holds it.
        All names of a hardlinked file in one snapshot folder are one entry."""
        if node.type == FILE and (node.nlink or 0) > 1 and node.inode is not None and node.device is not None:
            key = hardlink_key(parent.root, node.device, node.inode)
        else:
            key = child_key(parent.ino, node.name)
        ino, check, live = self._table.slot(key)
        if live is not None:
            return live
        if node.type == DIR:
            return TreeDir(ino, check, parent.ino, node.name, node, parent.root)
        assert parent.node.subtree is not None  # it has a listing: `node` is in it
        return TreeEntry(ino, check, parent.ino, node.name, parent.node.subtree, parent.root)

    def known_child(self, parent: TreeDir, node: Node) -> int | None:
        """The inode number of a listed entry the kernel holds (readdirplus told it), or None."""
        rec = self.child(parent, node)
        return rec.ino if self._table.holds(rec) else None

    async def listing(self, rec: TreeDir) -> list[Node]:
        if rec.node.subtree is None:
            return []  # a folder without a listing: its parent's listing has logged it
        if not self._storage.index_ready.is_set():
            await self._storage.index_ready.wait()
        return await self.load(rec, rec.node.subtree)

    def cached_listing(self, rec: TreeDir) -> list[Node] | None:
        """The listing if it is at hand, without loading it."""
        return None if rec.node.subtree is None else self._storage.trees.cached(rec.node.subtree)

    async def load(self, rec: Inode, tree_id: bytes) -> list[Node]:
        """A listing that `rec` needs; a damaged or missing one fails that folder, nothing else.
        When `rec` is the folder shown (not an entry finding its node), what the reader rules
        left out or repaired in it is logged, once."""
        try:
            listing = await self._storage.trees.get(tree_id)
        except Exception as exc:
            self._damage.report(rec, tree_id, f"cannot read the folder listing: {describe(exc)}")
            raise FsError(errno.EIO) from exc
        if listing.problems and isinstance(rec, TreeDir | VersionsDir):
            self._damage.report_listing(rec, tree_id, listing)
        return listing

    async def node(self, rec: Inode) -> Node | None:
        """The node of an entry of a snapshot tree or of versions/; None for the layout's own."""
        if isinstance(rec, TreeDir | VersionEntry):
            return rec.node
        if not isinstance(rec, TreeEntry):
            return None
        node = find(await self.load(rec, rec.tree_id), rec.name)
        if node is None:
            raise FsError(errno.ESTALE)
        return node


def find(nodes: list[Node], name: bytes) -> Node | None:
    """The entry called `name` of a listing, or None."""
    i = position(nodes, name)
    return nodes[i] if i < len(nodes) and nodes[i].name == name else None


def position(nodes: list[Node], name: bytes) -> int:
    """Where `name` is, or would be, in a listing."""
    return bisect.bisect_left(nodes, name, key=_node_name)


def _node_name(node: Node) -> bytes:
    return node.name
