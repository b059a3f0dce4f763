"""The one place where the mount talks to the repository, always from worker threads.

Backend reads, decryption and decompression block, so every call into the repository runs in a
thread under a capacity limiter: chunks and trees through their loaders, the snapshot listing,
snapshot files and index updates one at a time. The mount holds no repository lock (prune must be
able to run): a blob whose pack has gone, or that the index does not know yet, makes the loading
thread reload the index and try once more.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import trio

from backupfs.backends.base import FileType
from backupfs.errors import BackupfsError, BlobNotIndexed, IntegrityError, NotFound, PackMissing
from backupfs.format.pack import DATA, TREE
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import Listing, read_listing
from backupfs.mount.api import VfsOptions
from backupfs.mount.loader import Loader
from backupfs.repository.repo import Repository

log = logging.getLogger(__name__)

INDEX_RELOAD_MIN_INTERVAL = 10.0  # seconds: a burst of misses (prune just ran) reloads once
TREE_WORKERS = 4  # threads decoding folder listings at once
SNAPSHOT_LOAD_THREADS = 8  # snapshot files read at once when many are new (the first listing)


class Storage:
    """The repository as the mount sees it: `chunks` and `trees` load through single-flight
    caches, `index_ready` is set once the index has loaded (requests that need it wait)."""

    def __init__(self, repo: Repository, options: VfsOptions, load_index: Callable[[], set[str]] | None) -> None:
        self.repo = repo
        # loads repo.index, returning the index files it covers; the mount passes one that
        # waits for a load started before trio and pyfuse3 had finished importing
        self._load_index_files = load_index or repo.load_index
        self.index_ready = trio.Event()
        self._index_names: set[str] = set()
        self._index_gen = 0
        self._index_lock = threading.Lock()  # one writer of repo.index at a time
        self._last_reload = 0.0
        self._bad_snapshots: set[str] = set()
        self._meta_limiter = trio.CapacityLimiter(1)
        self.chunks: Loader[bytes] = Loader(
            lambda bid: self._load_blob(DATA, bid),
            len,
            options.cache_bytes,
            options.workers,
            self._load_data_blobs,
            name="bfs-mount-chunk",
        )
        self.trees: Loader[Listing] = Loader(
            lambda tid: _compact(read_listing(self._load_blob(TREE, tid))),
            lambda nodes: len(nodes) + 1,
            options.tree_cache_nodes,
            TREE_WORKERS,
            name="bfs-mount-tree",
        )

    def start(self) -> None:
        """Starts the loaders' threads (on the trio loop that serves the filesystem)."""
        self.chunks.start()
        self.trees.start()

    def stop(self) -> None:
        self.chunks.stop()
        self.trees.stop()

    def chunk_len(self, content: list[tuple[int, bytes]], j: int, size: int) -> int:
        """How many bytes of a file (`size` bytes) its `j`th chunk gives: its plaintext length,
        but never past the next chunk's offset or the end (format.md 9, reader rules)."""
        room = (content[j + 1][0] if j + 1 < len(content) else size) - content[j][0]
        n = self.repo.index.raw_length(content[j][1])
        return room if n is None else min(n, room)  # not (yet) indexed: assume it fills its room

    # ------------------------------------------------------------------ on the trio loop

    async def load_index(self) -> None:
        # its own thread, not under the metadata limiter: the snapshot list must not wait for it
        t = time.monotonic()
        await trio.to_thread.run_sync(self._initial_index)
        self.index_ready.set()
        log.info("index loaded: %d blobs in %.3f s", len(self.repo.index), time.monotonic() - t)

    async def snapshot_ids(self) -> set[str]:
        """The snapshots in the repository, without those found damaged (reported once)."""
        names = await trio.to_thread.run_sync(self._list_snapshot_names, limiter=self._meta_limiter)
        self._bad_snapshots &= names
        return names - self._bad_snapshots

    async def load_snapshots(self, names: list[str]) -> dict[str, Snapshot]:
        """Those of `names` that can be read (a forgotten or damaged one is left out)."""
        return await trio.to_thread.run_sync(self._load_snapshots, names, limiter=self._meta_limiter)

    async def update_index(self) -> None:
        """Reads the index files written since the last look, once the first load is done."""
        await self.index_ready.wait()
        await trio.to_thread.run_sync(self._update_index, limiter=self._meta_limiter)

    # ------------------------------------------------------------------ in worker threads

    def _initial_index(self) -> None:
        with self._index_lock:
            self._index_names = self._load_index_files()

    def _list_snapshot_names(self) -> set[str]:
        return set(self.repo.file_names(FileType.SNAPSHOT))

    def _load_snapshots(self, names: list[str]) -> dict[str, Snapshot]:
        def load(name: str) -> tuple[str, Snapshot | None]:
            try:
                return name, self.repo.load_snapshot(name)
            except NotFound:
                return name, None  # forgotten meanwhile
            except BackupfsError as exc:
                log.error("snapshot %s cannot be read, it is not shown: %s", name[:8], exc)
                self._bad_snapshots.add(name)
                return name, None

        if not names:
            return {}
        with ThreadPoolExecutor(min(SNAPSHOT_LOAD_THREADS, len(names)), thread_name_prefix="bfs-mount-snap") as pool:
            return {name: snap for name, snap in pool.map(load, names) if snap is not None}

    def _update_index(self) -> None:
        """Adds index files written since the last look; reloads all when some were removed, or
        when a new one is damaged (the reload warns once and reads its packs' own headers)."""
        names = set(self.repo.file_names(FileType.INDEX))
        with self._index_lock:
            if self._index_names - names:
                self._reload_index_locked()
                return
            for name in sorted(names - self._index_names):
                try:
                    packs = self.repo.load_index_file(name).packs
                except NotFound:
                    continue  # replaced meanwhile: the next look reloads
                except IntegrityError:
                    self._reload_index_locked()
                    return
                for pack_id, entries in packs.items():
                    self.repo.index.add_pack(pack_id, entries)
            self._index_names = names

    def _reload_index_locked(self) -> None:
        """Every index file again; `_index_names` becomes what this load covers, so the next
        update neither reloads all for files it already dropped nor adds files twice."""
        log.info("reloading the repository index")
        # builds a new index and swaps it in: readers never see it half-made
        self._index_names = self.repo.load_index()
        self._index_gen += 1
        self._last_reload = time.monotonic()

    def _load_blob(self, btype: int, blob_id: bytes) -> bytes:
        """A blob whose pack has gone (prune) or that the index does not know (a newer backup)
        makes it reload the index and try once more."""
        gen = self._index_gen
        if blob_id in self.repo.index:
            try:
                return self.repo.load_blob(btype, blob_id)
            except PackMissing:
                pass
        with self._index_lock:
            if gen == self._index_gen and time.monotonic() - self._last_reload >= INDEX_RELOAD_MIN_INTERVAL:
                self._reload_index_locked()
        return self.repo.load_blob(btype, blob_id)

    def _load_data_blobs(self, blob_ids: list[bytes]) -> list[bytes | Exception]:
        """Neighbouring blobs in one ranged read (a folder's small files, on S3 one request
        instead of one per file). A blob the batch could not find (its pack moved by prune, or
        the index behind) goes through `_load_blob` and its reload."""
        results = self.repo.load_data_blobs(blob_ids)
        for i, r in enumerate(results):
            if isinstance(r, PackMissing | BlobNotIndexed):
                try:
                    results[i] = self._load_blob(DATA, blob_ids[i])
                except Exception as exc:
                    results[i] = exc
        return results


def _compact(nodes: Listing) -> Listing:
    """Shares the owner names among nodes: live inodes keep their nodes, ~10% less memory."""
    for n in nodes:
        if n.user is not None:
            n.user = sys.intern(n.user)
        if n.group is not None:
            n.group = sys.intern(n.group)
    return nodes
