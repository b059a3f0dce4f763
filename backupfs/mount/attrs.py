"""The attributes (stat) of every kind of entry, and how long the kernel may cache them.

Snapshot content never changes, so the kernel may cache its names and attributes for a day
(`content_timeout`); names that follow the snapshot set (the layout's own entries, snapshot root
folders, everything under versions/) only for a second (`dynamic_timeout`).
The layout's own entries belong to the mounting user, folders under versions/ to the owner of
the newest folder version of that path (so --allow-other does not expose private histories).
"""

from __future__ import annotations

import stat
import time

from backupfs.format.tree import DIR, FILE, FMT_OF_TYPE, SYMLINK, Node
from backupfs.mount.api import Attr, VfsOptions
from backupfs.mount.inodes import Inode, LatestLink, TreeDir, TreeEntry, VersionEntry, VersionsDir
from backupfs.mount.layout import Layout
from backupfs.mount.storage import Storage

LAYOUT_MODE = 0o555  # the layout's own folders, and versions/ folders of what was never a folder
LINK_MODE = 0o777
_BLOCK = 512  # st_blocks counts these
_PAGE = 4096  # a chunk occupies whole pages


class Attributes:
    """stat for any entry; a TreeEntry needs its node passed in (it does not keep it)."""

    def __init__(self, options: VfsOptions, storage: Storage, layout: Layout) -> None:
        self._options = options
        self._storage = storage
        self._layout = layout
        self._started_ns = time.time_ns()  # the layout's times before there is any snapshot

    def of(self, rec: Inode, node: Node | None = None) -> Attr:
        """`node` is required for a TreeEntry (which does not keep it)."""
        opts = self._options
        if isinstance(rec, TreeDir | VersionEntry):
            node = node or rec.node
        if node is not None and isinstance(rec, TreeDir | TreeEntry | VersionEntry):
            root = 0 if isinstance(rec, VersionEntry) else rec.root
            entry_t = opts.content_timeout if root not in (0, rec.ino) else opts.dynamic_timeout
            size = node.size if node.type == FILE else len(node.link_target or b"") if node.type == SYMLINK else 0
            return Attr(
                rec.ino,
                FMT_OF_TYPE[node.type] | node.mode,
                node.nlink or 1,
                node.uid,
                node.gid,
                size,
                self._blocks(node) if node.type == FILE and node.defect is None else 0,
                node.atime_ns,
                node.mtime_ns,
                node.ctime_ns,
                node.rdev or 0,
                opts.blksize,
                entry_t,
                opts.content_timeout,
            )
        t = opts.dynamic_timeout
        newest = self._layout.model.newest_ns or self._started_ns
        if isinstance(rec, LatestLink):
            n = len(rec.target)
            return Attr(rec.ino, stat.S_IFLNK | LINK_MODE, 1, opts.uid, opts.gid, n, 0, newest, newest, newest, 0, opts.blksize, t, t)  # fmt: skip
        mode, uid, gid, mtime = LAYOUT_MODE, opts.uid, opts.gid, newest
        if isinstance(rec, VersionsDir) and rec.state is not None:
            meta = rec.state.meta or (rec.state.leaves[-1][1] if rec.state.leaves else None)
            if meta is not None:
                mode = meta.mode if meta.type == DIR else LAYOUT_MODE
                uid, gid, mtime = meta.uid, meta.gid, meta.mtime_ns
        return Attr(rec.ino, stat.S_IFDIR | mode, 1, uid, gid, 0, 0, mtime, mtime, mtime, 0, opts.blksize, t, t)

    def _blocks(self, node: Node) -> int:
        """Blocks the file really used: its chunks' sizes, not holes (sparse files)."""
        content = node.content or []
        pages = 0
        for j in range(len(content)):
            pages += (self._storage.chunk_len(content, j, node.size) + _PAGE - 1) // _PAGE
        return pages * (_PAGE // _BLOCK)
