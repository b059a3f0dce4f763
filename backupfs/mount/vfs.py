"""A repository's snapshots as a read-only filesystem, without FUSE (`fuse` adapts it to pyfuse3).

This module is the only place that knows the layout of the mount::

    latest -> snapshots/<newest>
    snapshots/<local time>/...        each snapshot's tree, absolute source paths inside
    ids/<short id>/...                the same trees by id
    hosts/<host>/<time>/, hosts/<host>/latest
    tags/<tag>/<time>/,   tags/<tag>/latest
    versions/<path>/                  every path's history, built lazily (see `VersionSet`)

Each entry is one of the typed kinds of `inodes`, numbered from its identity key (`keys`).

All methods run on one trio loop and never block it: tree and chunk loads (backend read,
decryption, decompression) run in worker threads under capacity limiters. The mount holds no
repository lock (prune must be able to run): a blob whose pack has gone makes it reload the index
and retry once, and a snapshot that disappears from the repository disappears from the mount.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import functools
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import trio

from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, FILE, FMT_OF_TYPE, SYMLINK, Node
from backupfs.mount.api import Attr, FsError, VfsOptions
from backupfs.mount.inodes import (
    HOSTS_INO,
    IDS_INO,
    LAST_FIXED_INO,
    ROOT_INO,
    SNAPSHOTS_INO,
    TAGS_INO,
    DamageLog,
    GroupDir,
    Inode,
    InodeTable,
    LatestLink,
    LayoutDir,
    TreeDir,
    TreeEntry,
    VersionEntry,
    VersionsDir,
    describe,
)
from backupfs.mount.keys import child_key, hardlink_key, hash_ino, latest_key, snapshot_key, version_key
from backupfs.mount.model import Model, Snap, VersionSet
from backupfs.mount.storage import Storage
from backupfs.repository.repo import Repository

log = logging.getLogger(__name__)

_SEQ_SLACK = 8 << 20  # a read this close to the frontier of earlier reads continues a sequential scan
_PREFETCH_BATCH = 2  # chunks per prefetch job for a sequential reader
_SIBLINGS_AHEAD = 32  # files whose chunk is prefetched ahead of a reader opening a folder's files in order
_SMALL_FILE = 1 << 20  # larger files are prefetched by their own sequential reads
_MAX_PARTIAL = 64  # partly read chunks tracked per open file


@dataclasses.dataclass(frozen=True, slots=True)
class DirEntry:
    """One readdir result; pass it to `Vfs.remember` once the kernel has accepted it."""

    name: bytes
    attr: Attr
    next_id: int
    inode: Inode


class _Handle:
    """An open file: its node and where the last read ended (sequential-read detection)."""

    __slots__ = ("ahead", "last_end", "node", "rec", "served")

    def __init__(self, rec: Inode, node: Node) -> None:
        self.rec = rec
        self.node = node
        self.last_end = 0
        self.ahead = 0  # index of the first chunk not yet prefetched
        self.served: dict[bytes, int] = {}  # chunk id -> bytes of it returned so far


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
    ) -> None:
        self.repo = repo
        self.options = options or VfsOptions()
        self._storage = Storage(repo, self.options, load_index)
        self._chunks = self._storage.chunks
        self._trees = self._storage.trees
        self._index_ready = self._storage.index_ready
        self._invalidate = invalidate  # tells the kernel an entry it may cache has changed
        self._store = store  # puts a file's content into the kernel's page cache (worker threads only)
        self._table = InodeTable()
        self._damage = DamageLog(self._table)
        self._handles: dict[int, _Handle] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self._next_fh = 1
        self._model = Model.build({})
        self._snapshots: dict[str, Snapshot] = {}
        self._snaps_ready = trio.Event()
        self._refresh_lock = trio.Lock()
        self._dir_reads: OrderedDict[int, tuple[int, int]] = OrderedDict()  # dir ino -> (last opened, ahead)
        self._started_ns = time.time_ns()

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Loads the snapshot list and the index in the background, then polls for changes.

        Requests that need them wait, so the filesystem can be mounted before either is loaded.
        """
        async with trio.open_nursery() as nursery:
            self._storage.attach(nursery)
            task_status.started()
            nursery.start_soon(self._storage.load_index)
            await self._load_snapshot_set()
            while True:
                await trio.sleep(self.options.refresh_interval)
                try:
                    await self.refresh()
                except Exception as exc:  # the repository may be unreachable for a while: keep serving
                    log.warning("cannot refresh the snapshot list: %s", exc)

    async def wait_loaded(self) -> None:
        """Returns once the snapshot list and the index are loaded (requests wait for them anyway)."""
        await self._snaps_ready.wait()
        await self._index_ready.wait()

    async def _load_snapshot_set(self) -> None:
        t = time.monotonic()
        await self.refresh(initial=True)
        self._snaps_ready.set()
        log.info("%d snapshots loaded in %.3f s", len(self._model.snaps), time.monotonic() - t)

    async def refresh(self, *, initial: bool = False) -> bool:
        """Picks up snapshots made or forgotten since the last call; True if anything changed.

        Costs one listing of the snapshot folder when nothing changed. Later snapshots become
        visible only once the index files written before them are loaded. (At start-up the
        index loads concurrently; a blob it misses makes the loading thread reload it.)
        """
        async with self._refresh_lock:
            return await self._refresh(initial)

    async def _refresh(self, initial: bool) -> bool:
        names = await self._storage.snapshot_ids()
        known = set(self._snapshots)
        if names == known:
            return False
        added = sorted(names - known)
        loaded = await self._storage.load_snapshots(added)
        if loaded and not initial:
            await self._storage.update_index()
        old = self._model
        snapshots = {sid: snap for sid, snap in self._snapshots.items() if sid in names}
        snapshots.update(loaded)
        self._snapshots = snapshots
        self._model = Model.build(snapshots, old)
        if not initial:  # the kernel has cached nothing yet (and may not even be connected)
            self._notify_changes(old, self._model)
        return True

    def _notify_changes(self, old: Model, new: Model) -> None:
        """Drops kernel-cached names that went away or changed target (timeouts would anyway)."""
        if self._invalidate is None:
            return
        current = {s.sid for s in new.snaps}
        gone = [s for s in old.snaps if s.sid not in current]
        gone_ids = {s.sid for s in gone}
        inval: list[tuple[int, bytes]] = [(ROOT_INO, b"latest")]
        inval += [(SNAPSHOTS_INO, s.name) for s in gone]
        inval += [(IDS_INO, short) for short, s in old.by_short.items() if s.sid in gone_ids]
        for is_tag, parent, groups in ((False, HOSTS_INO, old.hosts), (True, TAGS_INO, old.tags)):
            for gname, members in groups.items():
                if not new.group(is_tag, gname):
                    inval.append((parent, gname))
                gino = hash_ino(child_key(parent, gname))[0]
                inval.append((gino, b"latest"))
                inval += [(gino, s.name) for s in members if s.sid in gone_ids]
        for parent, name in inval:
            self._invalidate(parent, name)

    # ------------------------------------------------------------------ inode table

    def remember(self, entry: DirEntry) -> None:
        """The kernel accepted a readdir entry: it now holds one more lookup of that inode."""
        self._table.ref(entry.inode)

    def forget(self, items: Sequence[tuple[int, int]]) -> None:
        self._table.forget(items)

    def inode_count(self) -> int:
        return len(self._table)

    # ------------------------------------------------------------------ attributes

    def _attr(self, rec: Inode, node: Node | None = None) -> Attr:
        """`node` is required for a TreeEntry (which does not keep it)."""
        opts = self.options
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
                self._blocks(node) if node.type == FILE else 0,
                node.atime_ns,
                node.mtime_ns,
                node.ctime_ns,
                node.rdev or 0,
                opts.blksize,
                entry_t,
                opts.content_timeout,
            )
        t = opts.dynamic_timeout
        newest = self._model.newest_ns or self._started_ns
        if isinstance(rec, LatestLink):
            n = len(rec.target)
            return Attr(rec.ino, stat.S_IFLNK | 0o777, 1, opts.uid, opts.gid, n, 0, newest, newest, newest, 0, opts.blksize, t, t)  # fmt: skip
        mode, uid, gid, mtime = 0o555, opts.uid, opts.gid, newest
        if isinstance(rec, VersionsDir) and rec.state is not None:
            meta = rec.state.meta or (rec.state.leaves[-1][1] if rec.state.leaves else None)
            if meta is not None:
                mode = meta.mode if meta.type == DIR else 0o555
                uid, gid, mtime = meta.uid, meta.gid, meta.mtime_ns
        return Attr(rec.ino, stat.S_IFDIR | mode, 1, uid, gid, 0, 0, mtime, mtime, mtime, 0, opts.blksize, t, t)

    def _blocks(self, node: Node) -> int:
        """512-byte blocks the file really used: its chunks' sizes, not holes (sparse files)."""
        content = node.content or []
        total = 0
        for j in range(len(content)):
            total += (self._storage.chunk_len(content, j, node.size) + 4095) // 4096
        return total * 8

    async def getattr(self, ino: int) -> Attr:
        rec = self._table.get(ino)
        return self._attr(rec, await self._node(rec))

    async def _node(self, rec: Inode) -> Node | None:
        """The node of a tree entry: kept by folders, looked up again in its listing for the
        rest. Files are most of a tree, and a node costs ~600 bytes: memory stays ~300 bytes per
        inode the kernel holds, and the listing is usually still cached when it is needed."""
        if isinstance(rec, TreeDir | VersionEntry):
            return rec.node
        if not isinstance(rec, TreeEntry):
            return None
        node = _find(await self._load_tree(rec, rec.tree_id), rec.name)
        if node is None:
            raise FsError(errno.ESTALE)
        return node

    # ------------------------------------------------------------------ lookup and listing

    async def lookup(self, parent: int, name: bytes) -> Attr:
        prec = self._table.get(parent)
        found: Inode | None
        if isinstance(prec, TreeDir):
            node = _find(await self._tree_of(prec), name)
            if node is None:
                raise FsError(errno.ENOENT)
            rec = self._tree_child(prec, node)
            self._table.ref(rec)
            return self._attr(rec, node)
        if isinstance(prec, VersionsDir):
            found = await self._version_child(prec, name)
        elif isinstance(prec, LayoutDir | GroupDir):
            await self._snaps_ready.wait()
            found = self._layout_child(prec, name)
        else:
            raise FsError(errno.ENOTDIR)
        if found is None:
            raise FsError(errno.ENOENT)
        self._table.ref(found)
        return self._attr(found)

    def _tree_child(self, prec: TreeDir, node: Node) -> Inode:
        if node.type == FILE and (node.nlink or 0) > 1 and node.inode is not None and node.device is not None:
            key = hardlink_key(prec.root, node.device, node.inode)
        else:
            key = child_key(prec.ino, node.name)
        ino, check, live = self._table.slot(key)
        if live is not None:
            return live
        if node.type == DIR:
            return TreeDir(ino, check, prec.ino, node.name, node, prec.root)
        assert prec.node.subtree is not None  # it has children
        return TreeEntry(ino, check, prec.ino, node.name, prec.node.subtree, prec.root)

    async def _tree_of(self, rec: TreeDir) -> list[Node]:
        if rec.node.subtree is None:
            return []
        if not self._index_ready.is_set():
            await self._index_ready.wait()
        return await self._load_tree(rec, rec.node.subtree)

    def _layout_children(self, rec: LayoutDir | GroupDir) -> list[tuple[bytes, Inode]]:
        """The entries of the layout's own folders, made fresh from the current snapshot set."""
        model = self._model
        ino = rec.ino
        out: list[tuple[bytes, Inode]] = []
        if isinstance(rec, GroupDir):
            members = model.group(rec.is_tag, rec.name)
            out = [(s.name, self._snap_root(ino, s.name, s)) for s in members]
            if members:
                out.append(self._latest(ino, members[-1].name))
        elif ino == ROOT_INO:
            fixed = [self._table.get(i) for i in range(ROOT_INO + 1, LAST_FIXED_INO + 1)]
            out = [(r.name, r) for r in fixed]
            if model.snaps:
                out.append(self._latest(ino, b"snapshots/" + model.snaps[-1].name))
        elif ino == SNAPSHOTS_INO:
            out = [(s.name, self._snap_root(ino, s.name, s)) for s in model.snaps]
        elif ino == IDS_INO:
            out = [(short, self._snap_root(ino, short, s)) for short, s in model.by_short.items()]
        elif ino in (HOSTS_INO, TAGS_INO):
            groups = model.tags if ino == TAGS_INO else model.hosts
            out = [(g, self._group(ino, g)) for g in groups]
        return out

    def _layout_child(self, rec: LayoutDir | GroupDir, name: bytes) -> Inode | None:
        model = self._model
        ino = rec.ino
        if ino == ROOT_INO or (isinstance(rec, GroupDir) and name == b"latest"):
            return next((r for n, r in self._layout_children(rec) if n == name), None)
        s: Snap | None = None
        if isinstance(rec, GroupDir):
            s = model.by_name.get(name)
            if s is not None and s not in model.group(rec.is_tag, rec.name):
                s = None
        elif ino == SNAPSHOTS_INO:
            s = model.by_name.get(name)
        elif ino == IDS_INO:
            s = model.by_short.get(name)
        elif ino in (HOSTS_INO, TAGS_INO):
            return self._group(ino, name) if model.group(ino == TAGS_INO, name) else None
        return None if s is None else self._snap_root(ino, name, s)

    def _group(self, parent: int, name: bytes) -> Inode:
        ino, check, live = self._table.slot(child_key(parent, name))
        return live or GroupDir(ino, check, parent, name, parent == TAGS_INO)

    def _latest(self, parent: int, target: bytes) -> tuple[bytes, Inode]:
        ino, check, live = self._table.slot(latest_key(parent, target))
        return b"latest", live or LatestLink(ino, check, parent, b"latest", target)

    def _snap_root(self, parent: int, name: bytes, s: Snap) -> Inode:
        ino, check, live = self._table.slot(snapshot_key(parent, name, s.sid))
        if live is not None:
            return live
        snap = s.snap
        node = Node(
            name=name,
            type=DIR,
            mode=0o755,
            uid=snap.uid,
            gid=snap.gid,
            mtime_ns=snap.time_ns,
            atime_ns=snap.time_ns,
            ctime_ns=snap.time_ns,
            subtree=snap.tree,
        )
        return TreeDir(ino, check, parent, name, node, ino)

    async def opendir(self, ino: int) -> int:
        rec = self._table.get(ino)
        if isinstance(rec, TreeDir):
            handle = _DirHandle(rec, await self._tree_of(rec), None)
        elif isinstance(rec, VersionsDir):
            handle = _DirHandle(rec, None, await self._version_children(rec))
        elif isinstance(rec, LayoutDir | GroupDir):
            await self._snaps_ready.wait()
            handle = _DirHandle(rec, None, self._layout_children(rec))
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
                rec = self._tree_child(parent, nodes[i])
                yield DirEntry(nodes[i].name, self._attr(rec, nodes[i]), i + 1, rec)
        else:
            items = handle.items or []
            for i in range(start, len(items)):
                name, rec = items[i]
                yield DirEntry(name, self._attr(rec), i + 1, rec)

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # ------------------------------------------------------------------ versions/

    def _version_set(self, rec: VersionsDir) -> VersionSet:
        if rec.state is not None:
            return rec.state
        state = VersionSet()  # versions/ itself: every snapshot's root
        for s in self._model.snaps:
            if s.snap.tree not in state.seen:
                state.seen.add(s.snap.tree)
                state.trees.append((s.name, s.snap.tree))
        return state

    async def _versions_ready(self) -> None:
        await self._snaps_ready.wait()
        await self._index_ready.wait()

    async def _load_tree(self, rec: Inode, tree_id: bytes) -> list[Node]:
        try:
            return await self._trees.get(tree_id)
        except Exception as exc:  # damaged or missing: this folder fails, nothing else
            self._damage.report(rec, tree_id, f"cannot read the folder listing: {describe(exc)}")
            raise FsError(errno.EIO) from exc

    async def _version_children(self, rec: VersionsDir) -> list[tuple[bytes, Inode]]:
        await self._versions_ready()
        state = self._version_set(rec)
        out = [(name, self._version_leaf(rec, name, node)) for name, node in state.leaves]
        taken = {name for name, _ in out}
        children: dict[bytes, VersionSet] = {}
        for snap_name, tree_id in state.trees:
            for node in await self._load_tree(rec, tree_id):
                children.setdefault(node.name, VersionSet()).add(snap_name, node)
        for name in sorted(children):
            if name not in taken:
                out.append((name, self._version_dir(rec, name, children[name])))
        return out

    async def _version_child(self, rec: VersionsDir, name: bytes) -> Inode | None:
        await self._versions_ready()
        state = self._version_set(rec)
        for leaf_name, node in state.leaves:
            if leaf_name == name:
                return self._version_leaf(rec, name, node)
        child = VersionSet()
        for snap_name, tree_id in state.trees:
            found = _find(await self._load_tree(rec, tree_id), name)
            if found is not None:
                child.add(snap_name, found)
        return None if child.empty() else self._version_dir(rec, name, child)

    def _version_dir(self, rec: VersionsDir, name: bytes, state: VersionSet) -> Inode:
        ino, check, live = self._table.slot(child_key(rec.ino, name))
        if isinstance(live, VersionsDir):
            live.state = state  # it may have gained versions
        return live or VersionsDir(ino, check, rec.ino, name, state)

    def _version_leaf(self, rec: VersionsDir, name: bytes, node: Node) -> Inode:
        ino, check, live = self._table.slot(version_key(rec.ino, name, node))
        return live or VersionEntry(ino, check, rec.ino, name, node)

    # ------------------------------------------------------------------ symlinks and xattrs

    async def readlink(self, ino: int) -> bytes:
        rec = self._table.get(ino)
        if isinstance(rec, LatestLink):
            return rec.target
        node = await self._node(rec)
        if node is not None and node.type == SYMLINK:
            return node.link_target or b""
        raise FsError(errno.EINVAL)

    async def listxattr(self, ino: int) -> list[bytes]:
        node = await self._node(self._table.get(ino))
        return [k for k, _ in node.xattrs or ()] if node is not None else []

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        node = await self._node(self._table.get(ino))
        for k, v in (node.xattrs if node is not None else None) or ():
            if k == name:
                return v
        raise FsError(errno.ENODATA)

    # ------------------------------------------------------------------ files

    async def open(self, ino: int, flags: int) -> int:
        rec = self._table.get(ino)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise FsError(errno.EROFS)
        node = await self._node(rec)
        if node is None or node.type == DIR:
            raise FsError(errno.EISDIR)
        if node.type != FILE:
            raise FsError(errno.EINVAL)
        if node.content and not self._index_ready.is_set():
            await self._index_ready.wait()
        self._prefetch_siblings(rec, node)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = _Handle(rec, node)
        return fh

    def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        """Fetches only the chunks the range covers; a sequential reader gets the next chunks
        prefetched concurrently. A single-chunk read returns a view into the cached chunk."""
        h = self._handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        node = h.node
        end = min(off + size, node.size)
        if off >= end:
            return b""
        content = node.content or []
        j = max(bisect.bisect_right(content, off, key=_chunk_offset) - 1, 0)
        pieces: list[tuple[int, int, bytes]] = []
        while j < len(content) and content[j][0] < end:
            c_off, bid = content[j]
            c_len = self._storage.chunk_len(content, j, node.size)
            if c_off + c_len > off:
                pieces.append((c_off, c_len, bid))
            j += 1
        # The kernel's read-ahead sends several requests at once, and they arrive a little out of
        # order: a read near the frontier is sequential, one far ahead is a seek (start over
        # there), one far behind leaves the frontier alone (a re-read must not restart prefetch).
        if off > h.last_end + _SEQ_SLACK:
            h.last_end, h.ahead = end, 0
        elif off >= h.last_end - _SEQ_SLACK:
            h.last_end = max(h.last_end, end)
            self._prefetch(h, content, j, end)
        if len(pieces) > 1:
            self._chunks.prefetch([bid for _, _, bid in pieces[1:]], 1 << 30)  # the rest meanwhile
        if len(pieces) == 1:
            c_off, c_len, bid = pieces[0]
            if c_off <= off and end <= c_off + c_len:
                data = await self._chunk(h, bid)
                if len(data) >= end - c_off:
                    self._served(h, bid, end - off, len(data))
                    return memoryview(data)[off - c_off : end - c_off]
        parts: list[bytes | memoryview] = []
        pos = off
        for c_off, c_len, bid in pieces:
            data = await self._chunk(h, bid)
            lo, hi = max(pos, c_off), min(end, c_off + min(c_len, len(data)))
            if hi > lo:
                if lo > pos:
                    parts.append(bytes(lo - pos))  # a hole
                parts.append(memoryview(data)[lo - c_off : hi - c_off])
                self._served(h, bid, hi - lo, len(data))
                pos = hi
        if pos < end:
            parts.append(bytes(end - pos))
        return b"".join(parts)  # one copy, no zero-filling

    def _prefetch_siblings(self, rec: Inode, node: Node) -> None:
        """tar, cp -r and rsync open a folder's files one after another in listing order: once
        two opens follow that order, the next small files' chunks are fetched concurrently, so
        each open no longer waits for its own backend read and decryption in turn."""
        parent = self._table.find(rec.parent)
        if not isinstance(parent, TreeDir) or parent.node.subtree is None:
            return
        nodes = self._trees.cached(parent.node.subtree)  # only when the listing is at hand
        if nodes is None:
            return
        i = bisect.bisect_left(nodes, node.name, key=_node_name)
        last, ahead = self._dir_reads.pop(parent.ino, (-1, 0))
        if 0 < i - last <= _SIBLINGS_AHEAD and ahead - i <= _SIBLINGS_AHEAD // 2:
            start = max(i + 1, ahead)
            ahead = min(len(nodes), i + 1 + _SIBLINGS_AHEAD)
            budget = self.options.cache_bytes // 2  # what one job may hold: the cache must fit it
            batch: list[bytes] = []
            pushed: dict[bytes, list[int]] = {}
            for n in nodes[start:ahead]:
                if not (n.type == FILE and n.content and len(n.content) == 1 and n.size <= _SMALL_FILE):
                    continue
                budget -= n.size  # pushed contents are not cached, but are in memory until pushed
                if budget < 0:
                    break
                bid = n.content[0][1]
                ino = self._known_child(parent, n) if self._store is not None and n.content[0][0] == 0 else None
                if ino is not None:
                    pushed.setdefault(bid, []).append(ino)
                else:
                    batch.append(bid)
            self._chunks.prefetch(batch, 4 * _SIBLINGS_AHEAD)
            if pushed:
                # Their pages go to the kernel, which then answers the reads itself: one request
                # per file fewer, and nothing waits in our cache (keep=False).
                push = functools.partial(self._push_pages, pushed)
                self._chunks.prefetch(list(pushed), 4 * _SIBLINGS_AHEAD, keep=False, then=push)
        self._dir_reads[parent.ino] = (i, ahead)
        if len(self._dir_reads) > 64:
            self._dir_reads.popitem(last=False)

    def _known_child(self, parent: TreeDir, node: Node) -> int | None:
        """The inode number of a listed entry the kernel holds (readdirplus told it), or None."""
        rec = self._tree_child(parent, node)
        return rec.ino if self._table.holds(rec) else None

    def _push_pages(self, targets: dict[bytes, list[int]], blob_id: bytes, data: bytes) -> None:
        """Runs in a thread of its own, never on the loop nor in a loader thread: storing into a
        page that a pending READ has locked waits until the loop has answered that READ, which
        may need a loader thread."""
        assert self._store is not None
        view = memoryview(data)
        for ino in targets.get(blob_id, ()):
            try:
                self._store(ino, view)
            except OSError as exc:  # the kernel forgot the inode meanwhile: it will just READ
                log.debug("cannot store the pages of inode %d: %s", ino, exc)

    def _prefetch(self, h: _Handle, content: list[tuple[int, bytes]], j: int, end: int) -> None:
        limit = end + self.options.readahead_bytes
        j = max(j, h.ahead)
        max_pending = 4 * self.options.workers
        while j < len(content) and content[j][0] < limit:
            self._chunks.prefetch([bid for _, bid in content[j : j + _PREFETCH_BATCH]], max_pending)
            j += _PREFETCH_BATCH
        h.ahead = j

    def _served(self, h: _Handle, blob_id: bytes, n: int, size: int) -> None:
        """Drops a chunk from the cache once this reader has had all of it (the kernel keeps
        the pages). Counted, not guessed from the read order: the kernel's read-ahead requests
        are answered concurrently and finish out of order, and dropping a chunk at the read
        that reaches its end made 30 % of a large file's chunks load twice."""
        got = h.served.get(blob_id, 0) + n
        if got < size:
            if len(h.served) >= _MAX_PARTIAL:  # random reads: let the LRU decide instead
                h.served.clear()
            h.served[blob_id] = got
            return
        h.served.pop(blob_id, None)
        self._chunks.discard(blob_id)

    async def _chunk(self, h: _Handle, blob_id: bytes) -> bytes:
        try:
            return await self._chunks.get(blob_id)
        except Exception as exc:  # damaged, missing or unreadable: this read fails, nothing else
            self._damage.report(h.rec, blob_id, describe(exc))
            raise FsError(errno.EIO) from exc

    def cache_stats(self) -> dict[str, int]:
        return {
            "inodes": len(self._table),
            "chunks": len(self._chunks),
            "chunk_bytes": self._chunks.used,
            "trees": len(self._trees),
            "tree_nodes": self._trees.used,
            "open_files": len(self._handles),
        }


# ---------------------------------------------------------------------- helpers


def _node_name(node: Node) -> bytes:
    return node.name


def _find(nodes: list[Node], name: bytes) -> Node | None:
    """The entry called `name` of a listing (sorted by name), or None."""
    i = bisect.bisect_left(nodes, name, key=_node_name)
    return nodes[i] if i < len(nodes) and nodes[i].name == name else None


def _chunk_offset(chunk: tuple[int, bytes]) -> int:
    return chunk[0]
