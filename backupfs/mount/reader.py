"""Open files and reads: only the chunks a read covers, prefetch ahead of sequential readers and of
readers that open a folder's files in order, and the page cache fed directly.

A read inside one chunk returns a memoryview slice of the cached chunk; a read across chunks is
joined in one copy. A chunk leaves the cache once its reader has had all of it: the kernel's page
cache has it then (files open with keep_cache).
"""

from __future__ import annotations

import bisect
import errno
import functools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable

from backupfs.format.tree import DIR, FILE, Node
from backupfs.mount.api import FsError, VfsOptions
from backupfs.mount.inodes import DamageLog, Inode, InodeTable, TreeDir, describe
from backupfs.mount.storage import Storage
from backupfs.mount.trees import Trees, position

log = logging.getLogger(__name__)

_SEQ_SLACK = 8 << 20  # a read this close to the frontier of earlier reads continues a sequential scan
_PREFETCH_BATCH = 2  # chunks per prefetch job for a sequential reader
_SIBLINGS_AHEAD = 32  # files whose chunk is prefetched ahead of a reader opening a folder's files in order
_SIBLING_FILE_MAX = 1 << 20  # a sibling of one chunk up to this size is prefetched; larger ones by their own reads
_MAX_PARTIAL = 64  # partly read chunks tracked per open file
_MAX_DIRS_TRACKED = 64  # folders whose files are being opened in order, remembered at once
_NO_LIMIT = 1 << 30  # a prefetch that a reader awaits anyway: never refused


class _Handle:
    """An open file: its node and where the last read ended (sequential-read detection)."""

    __slots__ = ("ahead", "last_end", "node", "rec", "served")

    def __init__(self, rec: Inode, node: Node) -> None:
        self.rec = rec
        self.node = node
        self.last_end = 0
        self.ahead = 0  # index of the first chunk not yet prefetched
        self.served: dict[bytes, int] = {}  # chunk id -> bytes of it returned so far


class Reader:
    """Open files by handle number; `read` answers from the chunk cache or loads what it lacks."""

    def __init__(
        self,
        options: VfsOptions,
        table: InodeTable,
        storage: Storage,
        trees: Trees,
        damage: DamageLog,
        store: Callable[[int, memoryview], None] | None,
    ) -> None:
        self._options = options
        self._table = table
        self._storage = storage
        self._trees = trees
        self._damage = damage
        self._store = store  # puts a file's content into the kernel's page cache (worker threads only)
        self._handles: dict[int, _Handle] = {}
        self._next_fh = 1
        self._dir_reads: OrderedDict[int, tuple[int, int]] = OrderedDict()  # dir ino -> (last opened, ahead)

    def __len__(self) -> int:
        return len(self._handles)

    async def open(self, rec: Inode, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise FsError(errno.EROFS)
        node = await self._trees.node(rec)
        if node is None or node.type == DIR:
            raise FsError(errno.EISDIR)
        if node.type != FILE:
            raise FsError(errno.EINVAL)
        if node.defect is not None:  # cannot be read as stored: logged with its folder's listing
            raise FsError(errno.EIO)
        if node.content and not self._storage.index_ready.is_set():
            await self._storage.index_ready.wait()
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
            self._storage.chunks.prefetch([bid for _, _, bid in pieces[1:]], _NO_LIMIT)  # the rest meanwhile
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
        """tar, cp -r and rsync open a folder's files one after another in listing order: from
        the first open in a folder (or once two opens follow that order), the small files from
        there on are fetched in one job, so each open no longer waits for its own backend read
        and decryption in turn. The file being opened is in that job: its READ waits for it."""
        parent = self._table.find(rec.parent)
        if not isinstance(parent, TreeDir):
            return
        nodes = self._trees.cached_listing(parent)  # only when the listing is at hand
        if nodes is None:
            return
        i = position(nodes, node.name)
        last, ahead = self._dir_reads.pop(parent.ino, (-1, 0))
        if 0 < i - last <= _SIBLINGS_AHEAD and ahead - i <= _SIBLINGS_AHEAD // 2:
            start = max(i, ahead)
            ahead = min(len(nodes), i + 1 + _SIBLINGS_AHEAD)
            budget = self._options.cache_bytes // 2  # what one job may hold: the cache must fit it
            keys: list[bytes] = []
            pushed: dict[bytes, list[int]] = {}
            for n in nodes[start:ahead]:
                if not (n.type == FILE and n.content and len(n.content) == 1 and n.size <= _SIBLING_FILE_MAX):
                    continue
                budget -= n.size  # pushed contents are not cached, but are in memory until pushed
                if budget < 0:
                    break
                bid = n.content[0][1]
                keys.append(bid)
                if n is node or self._store is None or n.content[0][0] != 0:
                    continue  # the file opened now is read at once: kept for that READ
                ino = self._trees.known_child(parent, n)
                if ino is not None:
                    pushed.setdefault(bid, []).append(ino)
            # Pages of files whose inode the kernel holds (a readdirplus told it) go to the kernel,
            # which then answers the reads itself: one request per file fewer, and nothing waits
            # in our cache; the others are kept for their READs.
            push = functools.partial(self._push_pages, pushed) if pushed else None
            self._storage.chunks.prefetch(keys, 4 * _SIBLINGS_AHEAD, unkept=pushed.keys(), then=push)
        self._dir_reads[parent.ino] = (i, ahead)
        if len(self._dir_reads) > _MAX_DIRS_TRACKED:
            self._dir_reads.popitem(last=False)

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
        limit = end + self._options.readahead_bytes
        j = max(j, h.ahead)
        max_pending = 4 * self._options.workers
        while j < len(content) and content[j][0] < limit:
            self._storage.chunks.prefetch([bid for _, bid in content[j : j + _PREFETCH_BATCH]], max_pending)
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
        self._storage.chunks.discard(blob_id)

    async def _chunk(self, h: _Handle, blob_id: bytes) -> bytes:
        try:
            return await self._storage.chunks.get(blob_id)
        except Exception as exc:  # damaged, missing or unreadable: this read fails, nothing else
            self._damage.report(h.rec, blob_id, describe(exc))
            raise FsError(errno.EIO) from exc


def _chunk_offset(chunk: tuple[int, bytes]) -> int:
    return chunk[0]
