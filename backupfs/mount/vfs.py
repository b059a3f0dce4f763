"""A repository's snapshots as a read-only filesystem, without FUSE (`fuse` adapts it to pyfuse3).

The facade: each request finds its inode in the table (`inodes`) and hands it to the part that
owns that kind of entry: the layout's own folders (`layout`), the snapshots' trees (`trees`),
versions/ (`versions`), open files (`reader`); `attrs` answers stat for all of them, and
`storage` is the only part that calls the repository.

All methods run on one trio loop and never block it: tree and chunk loads (backend read,
decryption, decompression) run in worker threads under capacity limiters. The mount holds no
repository lock (prune must be able to run): a blob whose pack has gone makes it reload the index
and retry once, and a snapshot that disappears from the repository disappears from the mount.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
from collections.abc import Callable, Iterator, Sequence

import trio

from backupfs.format.tree import SYMLINK, Node
from backupfs.mount.api import Attr, FsError, VfsOptions
from backupfs.mount.attrs import Attributes
from backupfs.mount.inodes import DamageLog, GroupDir, Inode, InodeTable, LatestLink, LayoutDir, TreeDir, VersionsDir
from backupfs.mount.layout import Layout
from backupfs.mount.reader import Reader
from backupfs.mount.storage import Storage
from backupfs.mount.trees import Trees, find
from backupfs.mount.versions import Versions
from backupfs.repository.repo import Repository

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class DirEntry:
    """One readdir result; pass it to `Vfs.remember` once the kernel has accepted it."""

    name: bytes
    attr: Attr
    next_id: int
    inode: Inode


class _DirHandle:
    __slots__ = ("items", "nodes", "rec")

    def __init__(self, rec: Inode, nodes: list[Node] | None, items: list[tuple[bytes, Inode]] | None) -> None:
        self.rec = rec
        self.nodes = nodes  # a snapshot folder: its tree, children made as listed
        self.items = items  # the layout's own folders and versions/: made at opendir


class Vfs:
    """The filesystem. Run `serve()` in a nursery (it loads and refreshes in the background);
    the request methods mirror the FUSE operations and raise FsError."""

    def __init__(
        self,
        repo: Repository,
        options: VfsOptions | None = None,
        invalidate: Callable[[int, bytes], None] | None = None,
        store: Callable[[int, memoryview], None] | None = None,
        load_index: Callable[[], set[str]] | None = None,
        root: Node | None = None,
    ) -> None:
        """`invalidate` tells the kernel that a name it may cache has changed; `store` puts a
        file's content into the kernel's page cache (called from worker threads only);
        `load_index` loads repo.index and returns the index files it covers (the mount passes
        one that waits for a load started before trio and pyfuse3 had finished importing).
        With `root` (a folder of a snapshot: `mount MNT SNAP`), that folder is the root and
        the snapshot set is neither loaded nor polled."""
        self.repo = repo
        self.options = options or VfsOptions()
        self._storage = Storage(repo, self.options, load_index)
        self._single = root is not None
        self._table = InodeTable(root)
        damage = DamageLog(self._table)
        self._layout = Layout(self._table, self._storage, invalidate)
        self._trees = Trees(self._table, self._storage, damage)
        self._versions = Versions(self._table, self._layout, self._trees, self._storage)
        self._reader = Reader(self.options, self._table, self._storage, self._trees, damage, store)
        self._attrs = Attributes(self.options, self._storage, self._layout)
        self._dirs: dict[int, _DirHandle] = {}
        self._next_fh = 1

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Loads the snapshot list and the index in the background, then polls for changes.

        Requests that need them wait, so the filesystem can be mounted before either is loaded.
        """
        self._storage.start()
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                nursery.start_soon(self._storage.load_index)
                if self._single:
                    self._layout.ready.set()
                    await trio.sleep_forever()  # the nursery loads the index
                await self._layout.load()
                while True:
                    await trio.sleep(self.options.refresh_interval)
                    try:
                        await self.refresh()
                    except Exception as exc:  # the repository may be unreachable for a while: keep serving
                        log.warning("cannot refresh the snapshot list: %s", exc)
        finally:
            self._storage.stop()

    async def wait_loaded(self) -> None:
        """Returns once the snapshot list and the index are loaded (requests wait for them anyway)."""
        await self._layout.ready.wait()
        await self._storage.index_ready.wait()

    async def refresh(self) -> bool:
        """Picks up snapshots made or forgotten since the last call; True if anything changed."""
        return await self._layout.refresh()

    # ------------------------------------------------------------------ inode table

    def remember(self, entry: DirEntry) -> None:
        """The kernel accepted a readdir entry: it now holds one more lookup of that inode."""
        self._table.ref(entry.inode)

    def forget(self, items: Sequence[tuple[int, int]]) -> None:
        self._table.forget(items)

    def inode_count(self) -> int:
        return len(self._table)

    # ------------------------------------------------------------------ names and attributes

    async def getattr(self, ino: int) -> Attr:
        rec = self._table.get(ino)
        return self._attrs.of(rec, await self._trees.node(rec))

    async def lookup(self, parent: int, name: bytes) -> Attr:
        prec = self._table.get(parent)
        found: Inode | None
        if isinstance(prec, TreeDir):
            node = find(await self._trees.listing(prec), name)
            if node is None:
                raise FsError(errno.ENOENT)
            rec = self._trees.child(prec, node)
            self._table.ref(rec)
            return self._attrs.of(rec, node)
        if isinstance(prec, VersionsDir):
            found = await self._versions.child(prec, name)
        elif isinstance(prec, LayoutDir | GroupDir):
            await self._layout.ready.wait()
            found = self._layout.child(prec, name)
        else:
            raise FsError(errno.ENOTDIR)
        if found is None:
            raise FsError(errno.ENOENT)
        self._table.ref(found)
        return self._attrs.of(found)

    async def opendir(self, ino: int) -> int:
        rec = self._table.get(ino)
        if isinstance(rec, TreeDir):
            handle = _DirHandle(rec, await self._trees.listing(rec), None)
        elif isinstance(rec, VersionsDir):
            handle = _DirHandle(rec, None, await self._versions.children(rec))
        elif isinstance(rec, LayoutDir | GroupDir):
            await self._layout.ready.wait()
            handle = _DirHandle(rec, None, self._layout.children(rec))
        else:
            raise FsError(errno.ENOTDIR)
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = handle
        return fh

    def readdir(self, fh: int, start: int) -> Iterator[DirEntry]:
        """Entries from position `start`; call `remember` for each one the kernel accepts."""
        handle = self._dirs.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        if handle.nodes is not None:
            nodes = handle.nodes
            parent = handle.rec
            assert isinstance(parent, TreeDir)
            for i in range(start, len(nodes)):
                rec = self._trees.child(parent, nodes[i])
                yield DirEntry(nodes[i].name, self._attrs.of(rec, nodes[i]), i + 1, rec)
        else:
            items = handle.items or []
            for i in range(start, len(items)):
                name, rec = items[i]
                yield DirEntry(name, self._attrs.of(rec), i + 1, rec)

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # ------------------------------------------------------------------ symlinks and xattrs

    async def readlink(self, ino: int) -> bytes:
        rec = self._table.get(ino)
        if isinstance(rec, LatestLink):
            return rec.target
        node = await self._trees.node(rec)
        if node is None or node.type != SYMLINK:
            raise FsError(errno.EINVAL)
        if node.defect is not None or node.link_target is None:  # logged with its folder's listing
            raise FsError(errno.EIO)
        return node.link_target

    async def listxattr(self, ino: int) -> list[bytes]:
        node = await self._trees.node(self._table.get(ino))
        return [k for k, _ in node.xattrs or ()] if node is not None else []

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        node = await self._trees.node(self._table.get(ino))
        for k, v in (node.xattrs if node is not None else None) or ():
            if k == name:
                return v
        raise FsError(errno.ENODATA)

    # ------------------------------------------------------------------ files

    async def open(self, ino: int, flags: int) -> int:
        return await self._reader.open(self._table.get(ino), flags)

    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        return await self._reader.read(fh, off, size)

    def release(self, fh: int) -> None:
        self._reader.release(fh)

    def cache_stats(self) -> dict[str, int]:
        chunks, trees = self._storage.chunks, self._storage.trees
        return {
            "inodes": len(self._table),
            "chunks": len(chunks),
            "chunk_bytes": chunks.used,
            "trees": len(trees),
            "tree_nodes": trees.used,
            "open_files": len(self._reader),
        }
