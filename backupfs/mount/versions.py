"""versions/: every path's history, built lazily.

A folder versions/P is described by a `VersionSet`: the distinct trees P was as a folder and the
distinct contents it had otherwise. Its entries are the union of the names in those trees, each
a folder of its own, plus one entry per content, named by the snapshot where it first appeared.
Looking up a name computes only that name's set, from its parent's trees, so nothing is built
before it is visited.
"""

from __future__ import annotations

from backupfs.format.tree import Node
from backupfs.mount.inodes import Inode, InodeTable, VersionEntry, VersionsDir
from backupfs.mount.keys import child_key, version_key
from backupfs.mount.layout import Layout
from backupfs.mount.model import VersionSet
from backupfs.mount.storage import Storage
from backupfs.mount.trees import Trees, find


class Versions:
    """The folders under versions/ and their entries, each computed when first asked for."""

    def __init__(self, table: InodeTable, layout: Layout, trees: Trees, storage: Storage) -> None:
        self._table = table
        self._layout = layout
        self._trees = trees
        self._storage = storage

    async def children(self, rec: VersionsDir) -> list[tuple[bytes, Inode]]:
        await self._ready()
        state = self._version_set(rec)
        out = [(name, self._leaf(rec, name, node)) for name, node in state.leaves]
        taken = {name for name, _ in out}
        children: dict[bytes, VersionSet] = {}
        for snap_name, tree_id in state.trees:
            for node in await self._trees.load(rec, tree_id):
                children.setdefault(node.name, VersionSet()).add(snap_name, node)
        for name in sorted(children):
            if name not in taken:
                out.append((name, self._folder(rec, name, children[name])))
        return out

    async def child(self, rec: VersionsDir, name: bytes) -> Inode | None:
        await self._ready()
        state = self._version_set(rec)
        for leaf_name, node in state.leaves:
            if leaf_name == name:
                return self._leaf(rec, name, node)
        child = VersionSet()
        for snap_name, tree_id in state.trees:
            found = find(await self._trees.load(rec, tree_id), name)
            if found is not None:
                child.add(snap_name, found)
        return None if child.empty() else self._folder(rec, name, child)

    async def _ready(self) -> None:
        await self._layout.ready.wait()
        await self._storage.index_ready.wait()

    def _version_set(self, rec: VersionsDir) -> VersionSet:
        if rec.state is not None:
            return rec.state
        state = VersionSet()  # versions/ itself: every snapshot's root
        for s in self._layout.model.snaps:
            if s.snap.tree not in state.seen:
                state.seen.add(s.snap.tree)
                state.trees.append((s.name, s.snap.tree))
        return state

    def _folder(self, rec: VersionsDir, name: bytes, state: VersionSet) -> Inode:
        ino, check, live = self._table.slot(child_key(rec.ino, name))
        if isinstance(live, VersionsDir):
            live.state = state  # it may have gained versions
        return live or VersionsDir(ino, check, rec.ino, name, state)

    def _leaf(self, rec: VersionsDir, name: bytes, node: Node) -> Inode:
        ino, check, live = self._table.slot(version_key(rec.ino, name, node))
        return live or VersionEntry(ino, check, rec.ino, name, node)
