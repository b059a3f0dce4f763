"""The backup pipeline: walk, chunk, hash, dedup, compress, encrypt, pack, then the snapshot.

The walker thread lists directories and decides per file; file jobs run on a thread pool (every
heavy library releases the GIL, so two workers keep two cores busy); packs upload on the packer's
own threads. Unchanged files (same inode, size, mtime, ctime as in the parent snapshot) are not
read again.

With `dry_run`, everything is read, chunked and hashed as usual but nothing is written: blob ids
are looked up in the index to count what the backup would add (before compression).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import getpass
import os
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO

from pyfastcdc import BinaryStreamReader, FastCDC

from backupfs import __version__
from backupfs.crypto import ContentHasher
from backupfs.errors import BackupfsError, IntegrityError
from backupfs.format.pack import DATA, TREE
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, FILE, Node, encode_tree
from backupfs.ops import fsmeta
from backupfs.ops.dirfds import DirChain, open_source_dir
from backupfs.ops.excludes import CACHEDIR, Excluder, TagFile
from backupfs.repository.repo import Repository

# A file up to this size is read whole and cut in memory, in the file's own thread; a larger one
# streams through the chunker. (Not restore's _BATCH_FILE_MAX nor the mount's _SIBLING_FILE_MAX.)
READ_WHOLE_MAX = 8 * 1024 * 1024
READ_PIECE = 64 * 1024  # further reads of a file that was not at its end after `stat`'s size
LOWEST_PRIORITY = 19  # nice value of the scanner thread
MAX_PENDING_FILES = 64  # files handed to the pool and not yet read (each holds an fd)
# A file up to this size (by `stat`) is read by the walking thread itself, not handed to the pool:
# its work is mostly Python per-file overhead, which holds the GIL anyway, and each hand-off
# between threads cost more CPU (futex wake-ups) than the file's own work (docs/benchmarks.md,
# issue 11). Larger files go to the pool, where hashing, compression and encryption release the
# GIL and keep both cores busy.
INLINE_FILE_MAX = 64 * 1024
# Small files of a folder opened ahead of their reads, each with a read-ahead hint: their data
# arrives from disk in parallel while the walker works through them one by one.
PREFETCH_FILES = 32


@dataclasses.dataclass
class BackupOptions:
    paths: list[str]
    excludes: list[str] = dataclasses.field(default_factory=list)
    iexcludes: list[str] = dataclasses.field(default_factory=list)  # matched ignoring case
    exclude_caches: bool = False
    exclude_if_present: list[TagFile] = dataclasses.field(default_factory=list)
    exclude_larger_than: int | None = None  # bytes: larger regular files are left out
    dry_run: bool = False  # read and hash everything, write nothing
    one_file_system: bool = False
    tags: list[str] = dataclasses.field(default_factory=list)
    host: str = dataclasses.field(default_factory=socket.gethostname)
    parent: str | None = None  # snapshot id; None = pick the latest with the same host and paths
    force: bool = False  # read every file even if unchanged
    workers: int = max(2, min(4, (os.cpu_count() or 2)))
    time_ns: int | None = None


# Told of each entry saved, once its folder is done (folders after their contents): the action
# (`new`, `modified` or `unchanged` against the parent snapshot), its absolute path, its node.
ItemSink = Callable[[str, bytes, Node], None]

NEW, MODIFIED, UNCHANGED = "new", "modified", "unchanged"


@dataclasses.dataclass
class BackupStats:
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unchanged: int = 0
    others_new: int = 0  # symlinks, devices, fifos
    others_changed: int = 0
    others_unchanged: int = 0
    total_files: int = 0  # files saved (new + changed + unchanged); unreadable ones are in `skipped`
    total_bytes: int = 0
    bytes_read: int = 0
    data_added: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    changed_during_read: list[str] = dataclasses.field(default_factory=list)  # saved as read
    warnings: list[str] = dataclasses.field(default_factory=list)
    duration: float = 0.0
    # progress only (not in the summary): bytes read, plus the sizes of files not read again
    bytes_done: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, object]:
        return {
            "files_new": self.files_new,
            "files_changed": self.files_changed,
            "files_unchanged": self.files_unchanged,
            "dirs_new": self.dirs_new,
            "dirs_changed": self.dirs_changed,
            "dirs_unchanged": self.dirs_unchanged,
            "others_new": self.others_new,
            "others_changed": self.others_changed,
            "others_unchanged": self.others_unchanged,
            "total_files_processed": self.total_files,
            "total_bytes_processed": self.total_bytes,
            "bytes_read": self.bytes_read,
            "data_added": self.data_added,
            "skipped": len(self.skipped),
            "files_changed_during_backup": len(self.changed_during_read),
            "duration_seconds": round(self.duration, 3),
        }


@dataclasses.dataclass
class ScanTotals:
    """What the scanner found ahead of the walk: the total that progress shows done against.
    Written by the scanner thread only; `finished` once it has seen everything."""

    files: int = 0
    bytes: int = 0
    finished: bool = False


class _LimitedReader:
    """readinto() over [offset, offset+length) of a file (to its end if length is None): feeds one
    data extent, or what follows bytes already read, to the chunker."""

    def __init__(self, fd: int, offset: int, length: int | None, prefix: bytes = b"") -> None:
        self._fd = fd
        self._pos = offset
        self._left = length
        self._prefix = memoryview(prefix)

    def readinto(self, buf: memoryview) -> int:
        if self._prefix:
            n = min(len(buf), len(self._prefix))
            buf[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        n = len(buf) if self._left is None else min(len(buf), self._left)
        if n <= 0:
            return 0
        got = os.preadv(self._fd, [buf[:n]], self._pos)
        self._pos += got
        if self._left is not None:
            self._left -= got
        return got


@dataclasses.dataclass(slots=True, eq=False)
class _Dir:
    """A folder being saved: its entries' names, how far the walk is, and what it has so far."""

    node: Node | None  # its entry in its parent's tree (subtree set once saved); None for "/"
    pnode: Node | None  # its entry in the parent snapshot
    parent_nodes: dict[bytes, Node]  # the parent snapshot's entries of it, by name
    names: list[bytes]
    path_len: int  # its path is the walk's path buffer up to here
    plan: dict[bytes, object] | None = None  # a folder on the way to the backed-up paths: these only
    at: int = 0
    pending: list[Node | Future[Node | None] | None] = dataclasses.field(default_factory=list)
    # the parent snapshot's listing of it is exactly what a backup writes (no reader repairs): if
    # every entry is unchanged, its stored tree is the folder's tree, with no encoding or hashing
    reusable: bool = False
    # small files opened and not read yet: (their place in `pending`, fd, path, node, parent node)
    opened: list[tuple[int, int, bytes, Node, Node | None]] = dataclasses.field(default_factory=list)


class Archiver:
    def __init__(
        self,
        repo: Repository,
        options: BackupOptions,
        progress: Callable[[BackupStats, str], None] | None = None,
        on_item: ItemSink | None = None,
        *,
        scan: bool = False,
    ) -> None:
        """`progress` is called after each file and `on_item` of each entry saved (-v); with
        `scan`, a thread counts ahead of the walk into `totals`, and `current` names the file
        being read: what a progress line shows."""
        self.repo = repo
        self.opts = options
        self.stats = BackupStats()
        self.totals = ScanTotals()
        self.current = b""
        self.parent_id: str | None = None  # the parent snapshot used, once `run` has chosen it
        self._progress = progress
        self._scan_ahead = scan
        self._on_item = on_item
        self._excluder = Excluder(options.excludes, options.iexcludes)
        self._tags = [*options.exclude_if_present, *([CACHEDIR] if options.exclude_caches else [])]
        self._dry = _DryRun(repo) if options.dry_run else None
        self._save_blob = self._dry.save_blob if self._dry is not None else repo.save_blob
        self._chunker = repo.chunker()
        self._file_hash_key = repo.master.file_hash_key()
        self._tls = threading.local()
        self._pool = ThreadPoolExecutor(options.workers, thread_name_prefix="bfs-file")
        self._blob_pool = ThreadPoolExecutor(options.workers, thread_name_prefix="bfs-blob")
        self._window = options.workers * 2
        self._hardlinks: dict[tuple[int, int], Future[Node | None]] = {}  # the walk's thread only
        # files waiting for the pool: each holds a folder fd until its job is done
        self._slots = threading.BoundedSemaphore(MAX_PENDING_FILES)
        self._root_devs: set[int] = set()
        self._clean_parent = False  # set by each `_parent_children`

    # ---------------------------------------------------------------- entry points

    @property
    def added_bytes(self) -> int:
        """Stored bytes added so far (with `dry_run`: bytes it would add, before compression)."""
        return self._dry.added if self._dry is not None else self.repo.stats_added_bytes

    def run(self) -> tuple[str | None, Snapshot]:
        """The snapshot's id (None with `dry_run`: nothing saved) and the snapshot. Paths that do
        not exist are skipped (listed in `stats.skipped`), as restic does; if none exists, nothing
        is saved."""
        start = time.monotonic()
        paths = self._normalise_paths(self.opts.paths)
        stop_scan = threading.Event()
        scanner = threading.Thread(target=self._scan, args=(paths, stop_scan), name="bfs-scan", daemon=True)
        if self._scan_ahead:
            scanner.start()
        try:
            if not self.opts.dry_run:
                self.repo.index_leftover_packs()
            parent_id, parent_tree = self._find_parent(paths)
            self.parent_id = parent_id
            root_tree = self._build_root(paths, parent_tree)
            if not self.opts.dry_run:
                self.repo.flush()
        finally:
            stop_scan.set()
            if scanner.is_alive():
                scanner.join()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._blob_pool.shutdown(wait=True, cancel_futures=True)
        return self._save_snapshot(root_tree, paths, parent_id, start)

    def run_stream(
        self, name: str, stream: IO[bytes], check: Callable[[], None] | None = None
    ) -> tuple[str | None, Snapshot]:
        """Backs up one stream as /NAME; `check` raises (and no snapshot is saved) if the source failed."""
        start = time.monotonic()
        if not name or "/" in name.strip("/") or name in (".", ".."):
            raise BackupfsError(f"invalid --stdin-filename {name!r}")
        name = name.strip("/")
        self.repo.index_leftover_packs()
        hasher = ContentHasher(self._file_hash_key)
        content: list[tuple[int, bytes]] = []
        size = self._save_chunks(stream, 0, content, inline=False, hasher=hasher)
        if check is not None:
            check()
        now = time.time_ns()
        node = Node(
            name=os.fsencode(name),
            type=FILE,
            mode=0o644,
            uid=os.getuid(),
            gid=os.getgid(),
            mtime_ns=now,
            atime_ns=now,
            ctime_ns=now,
            size=size,
            content=content,
            file_hash=hasher.digest(),
        )
        self.stats.add(files_new=1, total_files=1, total_bytes=size)
        if self._on_item is not None:
            self._on_item(NEW, b"/" + node.name, node)
        root = self._save_tree([node])
        if not self.opts.dry_run:
            self.repo.flush()
        self._pool.shutdown(wait=True)
        self._blob_pool.shutdown(wait=True)
        return self._save_snapshot(root, ["/" + name], None, start)

    # ---------------------------------------------------------------- snapshot

    def _save_snapshot(
        self, root: bytes, paths: list[str], parent: str | None, start: float
    ) -> tuple[str | None, Snapshot]:
        self.stats.data_added = self.added_bytes
        self.stats.duration = time.monotonic() - start
        snap = Snapshot(
            time_ns=self.opts.time_ns or time.time_ns(),
            host=self.opts.host,
            user=getpass.getuser(),
            uid=os.getuid(),
            gid=os.getgid(),
            paths=paths,
            tags=sorted(set(self.opts.tags)),
            tree=root,
            parent=bytes.fromhex(parent) if parent else None,
            excludes=self._excluder.patterns,
            summary=self.stats.as_dict(),
            program=f"backupfs {__version__}",
        )
        if self.opts.dry_run:
            return None, snap
        return self.repo.save_snapshot(snap), snap

    def _normalise_paths(self, paths: list[str]) -> list[str]:
        """Absolute paths whose directories are real (symlinks resolved), the last part as given.

        The folders leading to a path are stored as directories in the snapshot; a symlink among
        them (`/home/me/data -> /srv/data`, then backing up `/home/me/data/docs`) was stored as a
        symlink node carrying a subtree, which ls and restore do not enter: the data was saved but
        unreachable. A path that is itself a symlink is still saved as the symlink. One that
        cannot be found is skipped and the others are backed up; if none is left, nothing is.
        """
        out = []
        for p in paths:
            parent, leaf = os.path.split(os.path.abspath(p))
            ap = os.path.join(os.path.realpath(parent), leaf) if leaf else parent
            try:
                os.lstat(ap)
            except OSError as exc:
                self._skip(os.fsencode(p), exc)
                continue
            out.append(ap)
        if not out:
            missing = "; ".join(f"{p}: {msg}" for p, msg in self.stats.skipped)
            raise BackupfsError(f"nothing to back up: {missing}")
        # a path inside another one is already covered
        out = sorted(set(out))
        return [p for p in out if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in out)]

    def _find_parent(self, paths: list[str]) -> tuple[str | None, bytes | None]:
        if self.opts.force:
            return None, None
        if self.opts.parent:
            sid, snap = self.repo.find_snapshot(self.opts.parent)
            return sid, snap.tree
        best: tuple[str, Snapshot] | None = None

        def damaged(name: str, exc: IntegrityError) -> None:
            # an old damaged snapshot must not stop every future backup
            self.stats.warnings.append(f"snapshot {name[:8]} is unreadable and was not considered as parent: {exc}")

        for sid, snap in self.repo.list_snapshots(on_damaged=damaged):
            if snap.host == self.opts.host and sorted(snap.paths) == paths:
                best = (sid, snap)
        return (best[0], best[1].tree) if best else (None, None)

    # ---------------------------------------------------------------- trees

    def _build_root(self, paths: list[str], parent_tree: bytes | None) -> bytes:
        """The root tree is `/`; each backed-up path hangs at its absolute place. The folders on
        the way to them are the plan: only the named entries of each are saved."""
        plan: dict[bytes, object] = {}
        for p in paths:
            parts = [os.fsencode(c) for c in p.strip("/").split("/") if c]
            node: dict[bytes, object] = plan
            for c in parts[:-1]:
                node = node.setdefault(c, {})  # type: ignore[assignment]
            if parts:
                node[parts[-1]] = None  # a leaf: backed up in full
            else:
                plan = {}  # backing up "/" itself (the only path then: it holds every other)
                break
        try:
            root_fd = open_source_dir(b"/")
        except OSError as exc:
            raise BackupfsError(f"/: {exc.strerror}") from exc
        try:
            if plan:
                top = _Dir(None, None, self._parent_children(parent_tree), sorted(plan), 0, plan=plan)
            else:
                top = self._listed(root_fd, b"/", 0, None, parent_tree, None)
            return self._walk(top, root_fd)
        finally:
            os.close(root_fd)

    def _walk(self, top: _Dir, root_fd: int) -> bytes:
        """Saves the tree below `top` (a folder open as `root_fd`), depth first with an explicit
        stack: each folder's tree is saved once its entries are, so deep folders cost no
        recursion. Everything is reached relative to its folder's fd (`DirChain` keeps the
        deepest few open), never by path: paths past PATH_MAX are fine."""
        chain = DirChain(root_fd)
        buf = bytearray()  # the current entry's path: the absolute path, without a trailing "/"
        dirs = [top]
        try:
            while True:
                d = dirs[-1]
                if d.at < len(d.names):
                    name = d.names[d.at]
                    d.at += 1
                    del buf[d.path_len :]
                    buf += b"/"
                    buf += name
                    sub = self._entry(chain, d, name, bytes(buf))
                    if sub is not None:
                        dirs.append(sub)
                    continue
                tree_id = self._finish(d, bytes(buf[: d.path_len]))
                dirs.pop()
                if not dirs:
                    return tree_id
                assert d.node is not None
                d.node.subtree = tree_id
                try:
                    chain.pop()
                except OSError as exc:  # moved or replaced meanwhile: what is left of it is lost
                    parent = dirs[-1]
                    self._skip(bytes(buf[: parent.path_len]) or b"/", exc)
                    parent.at = len(parent.names)
        finally:
            for d in dirs:
                for _at, fd, *_rest in d.opened:
                    os.close(fd)
            chain.close()

    def _entry(self, chain: DirChain, d: _Dir, name: bytes, path: bytes) -> _Dir | None:
        """Entry `name` of the current folder (`chain.fd`); returns the folder to enter next, if
        it is one. What it gives the folder's tree goes into `d.pending`, in order."""
        if d.plan is None and self._excluder.excluded(path):
            return None
        try:
            st = os.stat(name, dir_fd=chain.fd, follow_symlinks=False)
        except OSError as exc:
            self._skip(path, exc)
            return None
        pnode = d.parent_nodes.get(name)
        if d.plan is None:
            return self._add(chain, d, name, path, st, pnode, top_level=False)
        sub = d.plan[name]
        if sub is None:  # a path being backed up
            self._root_devs.add(st.st_dev)
            return self._add(chain, d, name, path, st, pnode, top_level=True)
        assert isinstance(sub, dict)
        try:
            node = fsmeta.node_from_path(chain.fd, name, st)
            if node is None:
                return None
            chain.push(name, open_source_dir(name, chain.fd))
        except OSError as exc:
            self._skip(path, exc)
            return None
        d.pending.append(node)
        ptree = pnode.subtree if pnode is not None else None
        return _Dir(node, pnode, self._parent_children(ptree), sorted(sub), len(path), plan=sub)

    def _listed(
        self, fd: int, path: bytes, path_len: int, node: Node | None, parent_tree: bytes | None, pnode: Node | None
    ) -> _Dir:
        """A folder to save in full: its entries, sorted by name."""
        try:
            names = sorted(os.fsencode(n) for n in os.listdir(fd))
        except OSError as exc:
            self._skip(path, exc)
            names = []
        d = _Dir(node, pnode, self._parent_children(parent_tree), self._kept(fd, names), path_len)
        d.reusable = bool(d.parent_nodes) and self._clean_parent
        return d

    def _kept(self, fd: int, names: list[bytes]) -> list[bytes]:
        """The names of folder `fd` that the walk enters, and the scanner counts: a tag file
        (--exclude-if-present, CACHEDIR.TAG) keeps only itself (two tags keep nothing: restic's
        rule). Patterns are matched per entry, by `_excluder`."""
        present = [tag for tag in self._tags if tag.present(fd)]
        if present:
            names = [n for n in names if all(n == tag.name for tag in present)]
        return names

    def _too_large(self, st: os.stat_result) -> bool:
        """--exclude-larger-than: a regular file past the limit is left out, by walk and scanner."""
        limit = self.opts.exclude_larger_than
        return limit is not None and stat.S_ISREG(st.st_mode) and st.st_size > limit

    def _finish(self, d: _Dir, path: bytes) -> bytes:
        """A folder's tree, once every entry is saved (`path` is the folder's)."""
        if d.opened:
            self._read_opened(d)
        nodes = []
        for item in d.pending:
            node = item.result() if isinstance(item, Future) else item
            if node is not None:
                nodes.append(node)
        tree_id = self._stored_tree(d, nodes)
        if tree_id is None:
            tree_id = self._save_tree(nodes)
        if d.plan is not None:
            return tree_id  # a folder on the way to a backed-up path is not counted
        if d.pnode is not None and d.pnode.subtree == tree_id:
            self.stats.add(dirs_unchanged=1)
            action = UNCHANGED
        elif d.pnode is not None:
            self.stats.add(dirs_changed=1)
            action = MODIFIED
        else:
            self.stats.add(dirs_new=1)
            action = NEW
        if self._on_item is not None:
            for node in nodes:
                if node.type != DIR:  # a folder is told of by its own `_finish`
                    self._on_item(_action(node, d.parent_nodes.get(node.name)), path + b"/" + node.name, node)
            if d.node is not None:
                self._on_item(action, path, d.node)
        return tree_id

    def _parent_children(self, tree_id: bytes | None) -> dict[bytes, Node]:
        """The parent snapshot's entries of a folder, in stored order; `_clean_parent` says
        whether they are exactly as stored (no reader rule changed or dropped one)."""
        self._clean_parent = False
        if tree_id is None:
            return {}
        try:
            listing = self.repo.load_tree(tree_id)
        except BackupfsError as exc:
            self.stats.warnings.append(f"parent snapshot tree unreadable, reading files again: {exc}")
            return {}
        self._clean_parent = not listing.problems and not listing.unsorted
        return {n.name: n for n in listing}

    def _scan_listing(self, path: bytes) -> list[tuple[bytes, os.stat_result]]:
        """The entries of a folder that the walk will take, as the walk decides (`_kept`, then
        the patterns), with their lstat. By path: a folder past PATH_MAX is left out of the
        count (the walk still saves it). OSError if the folder cannot be listed."""
        fd = open_source_dir(path)
        try:
            names = self._kept(fd, [os.fsencode(n) for n in os.listdir(fd)])
            base = path.rstrip(b"/")
            out = []
            for name in names:
                child = base + b"/" + name
                if self._excluder.excluded(child):
                    continue
                with contextlib.suppress(OSError):
                    out.append((child, os.stat(name, dir_fd=fd, follow_symlinks=False)))
            return out
        finally:
            os.close(fd)

    def _scan(self, paths: list[str], stop: threading.Event) -> None:
        """Counts the files and bytes the walk will meet, so progress has a total, a percent and
        an ETA (restic's scanner). Only lists and stats (which warms the inode cache the walk
        then uses), at the lowest CPU priority, handing the GIL on after every folder; stops
        with the backup. What it cannot read it leaves out: the walk reports it."""
        _lowest_priority()
        totals = self.totals
        folders: list[bytes] = []
        roots: list[tuple[bytes, os.stat_result]] = []
        for p in paths:
            with contextlib.suppress(OSError):
                roots.append((os.fsencode(p), os.lstat(p)))
        devices = {st.st_dev for _p, st in roots}

        def count(path: bytes, st: os.stat_result, top: bool) -> None:
            if self._too_large(st):
                return
            if stat.S_ISREG(st.st_mode):
                totals.files += 1
                totals.bytes += st.st_size
            elif stat.S_ISDIR(st.st_mode) and (top or not self.opts.one_file_system or st.st_dev in devices):
                folders.append(path)

        for path, st in roots:
            count(path, st, True)
        while folders and not stop.is_set():
            try:
                entries = self._scan_listing(folders.pop())
            except OSError:
                continue
            for child, st in entries:
                if stop.is_set():
                    return
                count(child, st, False)
            time.sleep(0)
        totals.finished = not stop.is_set()

    def _add(
        self, chain: DirChain, d: _Dir, name: bytes, path: bytes, st: os.stat_result, pnode: Node | None, top_level: bool
    ) -> _Dir | None:
        """An entry to save in full: a folder is returned to be entered, a file's content is
        read on the pool."""
        if stat.S_ISSOCK(st.st_mode):
            self.stats.warnings.append(f"{os.fsdecode(path)}: socket skipped")
            return None
        try:
            node = fsmeta.node_from_path(chain.fd, name, st)
        except OSError as exc:
            self._skip(path, exc)
            return None
        if node is None:
            return None
        if node.type == DIR:
            if d.opened:  # before the folder's own subtree: its fds are not held that long
                self._read_opened(d)
            d.pending.append(node)
            if self.opts.one_file_system and not top_level and st.st_dev not in self._root_devs:
                node.subtree = self._save_tree([])
                return None
            ptree = pnode.subtree if pnode and pnode.type == DIR else None
            try:
                chain.push(name, open_source_dir(name, chain.fd))
            except OSError as exc:  # saved as an empty folder, as one whose listing fails
                self._skip(path, exc)
                node.subtree = self._finish(_Dir(node, pnode, {}, [], len(path)), path)
                return None
            return self._listed(chain.fd, path, len(path), node, ptree, pnode)
        if node.type != FILE:
            self._count_other(node, pnode)
            d.pending.append(node)
            return None
        if self._too_large(st):
            return None
        if self._unchanged(node, pnode):
            assert pnode is not None
            node.content = pnode.content
            node.file_hash = pnode.file_hash  # same content: its hash, or none if it had none
            self.current = path
            # one lock per file
            self.stats.add(total_files=1, total_bytes=st.st_size, files_unchanged=1, bytes_done=st.st_size)
            self._report(path)
            d.pending.append(node)
            return None
        if st.st_size <= INLINE_FILE_MAX and st.st_nlink == 1:
            fd = self._open_file(chain.fd, name, path)
            if fd >= 0:
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                except OSError:
                    pass  # not a regular file after all (checked when read), or no hint taken
                d.opened.append((len(d.pending), fd, path, node, pnode))
                d.pending.append(None)
                if len(d.opened) >= PREFETCH_FILES:
                    self._read_opened(d)
            return None
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self._hardlinks.get(key)
            if first is not None:
                d.pending.append(self._pool.submit(self._copy_content, first, path, node, pnode))
                return None
            fut = self._file_job(chain.fd, name, path, node, pnode)
            self._hardlinks[key] = fut
        else:
            fut = self._file_job(chain.fd, name, path, node, pnode)
        d.pending.append(fut)
        return None

    def _file_job(self, dir_fd: int, name: bytes, path: bytes, node: Node, pnode: Node | None) -> Future[Node | None]:
        """Reads a file on the pool, through its own copy of its folder's fd (the walk moves on
        and may close its own). The copies held are bounded: the walk waits for a slot."""
        self._slots.acquire()
        try:
            job_fd = os.dup(dir_fd)
        except BaseException:
            self._slots.release()
            raise

        def job() -> Node | None:
            try:
                return self._save_file(job_fd, name, path, node, pnode)
            finally:
                os.close(job_fd)
                self._slots.release()

        try:
            return self._pool.submit(job)
        except BaseException:
            os.close(job_fd)
            self._slots.release()
            raise

    def _read_opened(self, d: _Dir) -> None:
        """Reads the small files `d` holds open, in this thread, in order."""
        opened = d.opened
        d.opened = []
        for i, (at, fd, path, node, pnode) in enumerate(opened):
            try:
                d.pending[at] = self._save_opened(fd, path, node, pnode)
            except BaseException:
                for _at, later, *_rest in opened[i + 1 :]:
                    os.close(later)
                raise

    def _copy_content(self, first: Future[Node | None], path: bytes, node: Node, pnode: Node | None) -> Node | None:
        """Another name of an inode read in this backup: same content, no second read; counted
        as the file it is under this name (new, or changed since the parent snapshot)."""
        done = first.result()
        if done is None:  # the first name could not be read: neither can this one
            self._skip(path, OSError(errno.EIO, "not saved: another name of this file could not be read"))
            return None
        node.content = done.content
        node.size = done.size
        node.file_hash = done.file_hash
        self._count_saved(node, pnode)
        self.stats.add(bytes_done=done.size)
        return node

    def _stored_tree(self, d: _Dir, nodes: list[Node]) -> bytes | None:
        """The parent snapshot's tree of `d` when `nodes` are its very entries (equal nodes encode
        to equal bytes): an unchanged folder costs a comparison, not an encoding and a hash."""
        if not d.reusable or d.pnode is None or d.pnode.subtree is None or len(nodes) != len(d.parent_nodes):
            return None
        if any(a != b for a, b in zip(nodes, d.parent_nodes.values(), strict=True)):
            return None
        if not self.repo.has_blob(d.pnode.subtree):  # e.g. a local check found its copy damaged
            return None
        self.stats.add(tree_blobs=1)
        return d.pnode.subtree

    def _count_saved(self, node: Node, pnode: Node | None) -> None:
        """A file read (or linked to one read) in this backup: new, or changed since the parent."""
        kind = "files_changed" if pnode is not None else "files_new"
        self.stats.add(**{kind: 1, "total_files": 1, "total_bytes": node.size})

    def _count_other(self, node: Node, pnode: Node | None) -> None:
        """A symlink, device or fifo: unchanged if the parent has the same one, as a file is."""
        if pnode is None:
            self.stats.add(others_new=1)
        elif (pnode.type, pnode.link_target, pnode.rdev, pnode.mtime_ns, pnode.ctime_ns) == (
            node.type,
            node.link_target,
            node.rdev,
            node.mtime_ns,
            node.ctime_ns,
        ):
            self.stats.add(others_unchanged=1)
        else:
            self.stats.add(others_changed=1)

    def _save_tree(self, nodes: list[Node]) -> bytes:
        tree_id = self._save_blob(TREE, encode_tree(nodes))[0]
        self.stats.add(tree_blobs=1)
        return tree_id

    # ---------------------------------------------------------------- files

    def _unchanged(self, node: Node, pnode: Node | None) -> bool:
        # a parent entry the reader rules cannot read (its `defect`) is never reused
        if pnode is None or pnode.type != FILE or pnode.content is None or pnode.defect is not None:
            return False
        if (pnode.inode, pnode.size, pnode.mtime_ns, pnode.ctime_ns) != (
            node.inode,
            node.size,
            node.mtime_ns,
            node.ctime_ns,
        ):
            return False
        return all(self.repo.has_blob(bid) for _off, bid in pnode.content)

    def _save_file(self, dir_fd: int, name: bytes, path: bytes, node: Node, pnode: Node | None) -> Node | None:
        """File `name` of folder `dir_fd` (whose path is for messages); None if it could not be read."""
        fd = self._open_file(dir_fd, name, path)
        return None if fd < 0 else self._save_opened(fd, path, node, pnode)

    def _open_file(self, dir_fd: int, name: bytes, path: bytes) -> int:
        """An fd of file `name` of folder `dir_fd`, or -1 if it cannot be opened (skip recorded)."""
        try:
            return _open_noatime(dir_fd, name)
        except OSError as exc:
            # ELOOP: O_NOFOLLOW met a symlink where the walker saw a file
            self._skip(path, _CHANGED_TYPE if exc.errno == errno.ELOOP else exc)
            return -1

    def _save_opened(self, fd: int, path: bytes, node: Node, pnode: Node | None) -> Node | None:
        """The content of file `fd` (closed here) into `node`; None if it could not be read."""
        self.current = path
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._skip(path, _CHANGED_TYPE)
                return None
            os.set_blocking(fd, True)
            extents = fsmeta.data_extents(fd, st.st_size)
            content: list[tuple[int, bytes]] = []
            hasher = ContentHasher(self._file_hash_key)
            if st.st_size == 0 or extents == [(0, st.st_size)]:
                node.size = self._save_whole(fd, st.st_size, content, hasher)
            else:  # sparse: only the data extents, the holes stay holes
                node.size = self._save_sparse(fd, st.st_size, extents, content, hasher)
            hasher.zeros_to(node.size)  # a trailing hole
            node.file_hash = hasher.digest() if hasher.size == node.size else None
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                with self.stats._lock:
                    self.stats.changed_during_read.append(os.fsdecode(path))
            node.content = content
        except OSError as exc:
            self._skip(path, exc)
            return None
        finally:
            os.close(fd)
        self._count_saved(node, pnode)
        self._report(path)
        return node

    def _save_whole(self, fd: int, size: int, content: list[tuple[int, bytes]], hasher: ContentHasher) -> int:
        """Reads a file to its end, whatever `stat` said (/proc files say 0, a log grows while it is
        read); returns the size read.

        Only a read of nothing is the end: a short read is not (procfs returns a page at a time).
        What stays small is read whole and cut in memory, in this thread: the streaming chunker
        allocates a max-chunk-size buffer per file, which dominated the cost of small files. A file
        that outgrows READ_WHOLE_MAX goes on streaming after the bytes already read."""
        if size > READ_WHOLE_MAX:
            return self._save_chunks(_LimitedReader(fd, 0, None), 0, content, inline=False, hasher=hasher)
        pieces: list[bytes] = []
        total = 0
        want = size + 1  # one read usually holds the whole file; the next one confirms the end
        while True:
            piece = os.pread(fd, want, total)
            if not piece:
                break
            pieces.append(piece)
            total += len(piece)
            want = READ_PIECE
            if total > READ_WHOLE_MAX:  # large after all: stream the rest after what is read
                reader = _LimitedReader(fd, total, None, prefix=b"".join(pieces))
                return self._save_chunks(reader, 0, content, inline=False, hasher=hasher)
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        hasher.update(data)
        for view, off in _with_offsets(self._chunker.cut(data)):
            content.append((off, self._save_blob(DATA, view)[0]))
        self.stats.add(bytes_read=len(data), bytes_done=len(data))
        return len(data)

    def _save_sparse(
        self,
        fd: int,
        size: int,
        extents: list[tuple[int, int]],
        content: list[tuple[int, bytes]],
        hasher: ContentHasher,
    ) -> int:
        """The data extents of a sparse file, then whatever was appended past `size` since stat;
        returns the file's size as read (a trailing hole counts, bytes read past `size` too). The
        holes are hashed as the zeros a restore gives back."""
        end = 0
        for off, length in extents:
            hasher.zeros_to(off)
            reader = _LimitedReader(fd, off, length)
            got = self._save_chunks(reader, off, content, inline=length <= READ_WHOLE_MAX, hasher=hasher)
            end = max(end, off + got)
        if os.pread(fd, 1, size):  # it grew: the tail is data (one byte probed, not a chunker buffer)
            hasher.zeros_to(size)
            return size + self._save_chunks(_LimitedReader(fd, size, None), size, content, inline=False, hasher=hasher)
        return max(end, min(size, os.fstat(fd).st_size))

    def _cdc(self) -> FastCDC:
        cdc: FastCDC | None = getattr(self._tls, "cdc", None)
        if cdc is None:
            cdc = self._tls.cdc = self._chunker.new_fastcdc()
        return cdc

    def _save_chunks(
        self,
        reader: BinaryStreamReader,
        base: int,
        content: list[tuple[int, bytes]],
        inline: bool,
        hasher: ContentHasher,
    ) -> int:
        """Chunks in this thread, and hashes the whole file here in order (`fh`); hashing,
        compression and encryption of the chunks run on the blob pool with a bounded window, so
        one large file keeps every core busy. Small files skip the hand-off (its cost is
        comparable to their work)."""
        total = 0
        save = self._save_blob
        window: deque[tuple[int, Future[tuple[bytes, int]]]] = deque()
        try:
            for chunk in self._cdc().cut_stream(reader):
                data = bytes(chunk.data)
                hasher.update(data)
                if inline:
                    content.append((base + total, save(DATA, data)[0]))
                else:
                    window.append((base + total, self._blob_pool.submit(save, DATA, data)))
                    if len(window) >= self._window:
                        off, fut = window.popleft()
                        content.append((off, fut.result()[0]))
                total += len(data)
                self.stats.add(bytes_read=len(data), bytes_done=len(data))
            while window:
                off, fut = window.popleft()
                content.append((off, fut.result()[0]))
        finally:
            for _off, fut in window:
                fut.cancel()
        return total

    # ---------------------------------------------------------------- reporting

    def _skip(self, path: bytes, exc: OSError) -> None:
        msg = exc.strerror or str(exc)
        with self.stats._lock:
            self.stats.skipped.append((os.fsdecode(path), msg))

    def _report(self, path: bytes) -> None:
        if self._progress is not None:
            self._progress(self.stats, os.fsdecode(path))


def _action(node: Node, pnode: Node | None) -> str:
    """What a backup did to a non-folder entry, against its entry in the parent snapshot."""
    if pnode is None:
        return NEW
    if node.type == FILE and pnode.type == FILE:
        # `_add` hands an unchanged file its parent's very content list: it was not read again
        return UNCHANGED if node.content is pnode.content else MODIFIED
    same = (node.type, node.link_target, node.rdev, node.mode, node.uid, node.gid, node.mtime_ns, node.xattrs) == (
        pnode.type, pnode.link_target, pnode.rdev, pnode.mode, pnode.uid, pnode.gid, pnode.mtime_ns, pnode.xattrs
    )  # fmt: skip
    return UNCHANGED if same else MODIFIED


class _DryRun:
    """Stands in for `Repository.save_blob` in a dry run: ids are computed and looked up, and
    what is new is counted (before compression), never stored."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._new: set[bytes] = set()
        self._lock = threading.Lock()
        self.added = 0

    def save_blob(self, btype: int, data: bytes | memoryview) -> tuple[bytes, int]:
        if len(data) > self._repo.max_blob_size(btype):  # as a real backup would fail
            raise BackupfsError(f"a blob of {len(data)} bytes exceeds what this repository allows (format.md 9)")
        blob_id = self._repo.blob_id(data)
        if self._repo.has_blob(blob_id):
            return blob_id, 0
        with self._lock:
            if blob_id in self._new:
                return blob_id, 0
            self._new.add(blob_id)
            self.added += len(data)
        return blob_id, len(data)


def _with_offsets(views: Iterator[memoryview]) -> Iterator[tuple[memoryview, int]]:
    pos = 0
    for view in views:
        yield view, pos
        pos += len(view)


_CHANGED_TYPE = OSError(errno.EINVAL, "changed type during backup")


def _lowest_priority() -> None:
    """This thread at nice 19 (Linux schedules threads one by one): it never takes a core from
    the backup's own threads."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)


def _open_noatime(dir_fd: int, name: bytes) -> int:
    """O_NONBLOCK: if a fifo or device replaced the file since the walker saw it, opening must not
    wait for a writer or a tape; the caller checks the type with fstat, then clears the flag."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        return os.open(name, flags | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, flags, dir_fd=dir_fd)
