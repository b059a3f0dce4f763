"""Restore a snapshot (or part of it) into a target directory.

Safety: every entry is created relative to an fd of its parent directory that this restore
created, with O_NOFOLLOW/O_EXCL, so neither a hostile tree (`..`, `/` in names) nor a symlink in
the tree or planted in the target can make it write outside the target. Directory metadata is
applied post-order, once every entry inside is written.

Depth: the tree is walked by `walk.walk` (iterative) and the folders' fds are kept by a
`dirfds.DirChain`, which holds only the deepest few open; no path is used past the target
itself, so a tree deeper than PATH_MAX allows restores like any other.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from backupfs.errors import BackupfsError, IntegrityError
from backupfs.format.pack import DATA
from backupfs.format.tree import DIR, FILE, SKIPPED, Listing, Node
from backupfs.ops import fsmeta
from backupfs.ops.dirfds import DirChain, open_beneath, open_dir
from backupfs.ops.excludes import Excluder
from backupfs.ops.walk import Kind, Step, shown, walk
from backupfs.repository.repo import Repository


@dataclasses.dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes_written: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    verified_files: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def error(self, msg: str) -> None:
        with self._lock:
            self.errors.append(msg)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)


@dataclasses.dataclass(slots=True, eq=False)
class _Folder:
    """A folder being restored (the target itself first): its listing, the files that wait for
    their content, and how many of its entries were restored (`--include` removes a folder that
    was made only to look inside and got nothing)."""

    node: Node | None
    take: bool
    repairs: list[str]
    listing: Listing | None = None
    restored: int = 0
    pending: list[Future[bool]] = dataclasses.field(default_factory=list)
    batch: list[tuple[int, Node, bytes]] = dataclasses.field(default_factory=list)  # created, waiting for content
    batch_bytes: int = 0
    lost: bool = False  # its fd could not be had again: the rest of it is not restored


class Restorer:
    def __init__(
        self,
        repo: Repository,
        tree: bytes,
        target: str,
        *,
        includes: list[str] | None = None,
        excludes: list[str] | None = None,
        verify: bool = False,
        workers: int = 4,
        progress: Callable[[RestoreStats], None] | None = None,
    ) -> None:
        self.repo = repo
        self.tree = tree
        self.target = os.path.abspath(target)
        self._include = Excluder(includes) if includes else None
        self._exclude = Excluder(excludes or [])
        self._verify = verify
        self._owner = os.geteuid() == 0
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="bfs-restore")
        self._blob_pool = ThreadPoolExecutor(workers, thread_name_prefix="bfs-restore-blob")
        self._window = workers * 2
        # first restored name of each multiply-linked inode, and the job writing its content
        self._hardlinks: dict[tuple[int, int], tuple[bytes, Future[bool]]] = {}
        self._progress = progress
        # files created but not yet written: each holds an fd until its job is done
        self._slots = threading.BoundedSemaphore(_MAX_PENDING_FILES)
        self.stats = RestoreStats()

    def run(self) -> RestoreStats:
        os.makedirs(self.target, exist_ok=True)
        root_fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._root_fd = root_fd
        chain = DirChain(root_fd)
        folders = [_Folder(None, take=True, repairs=[])]
        try:
            for step in walk(
                self.repo.load_tree, self.tree, listings=True, post_order=True, on_error=self._unreadable
            ):
                if step.kind is Kind.ENTRY:
                    self._entry(step, chain, folders)
                elif step.kind is Kind.LEAVE:
                    self._leave(step.path, chain, folders)
                else:
                    assert step.listing is not None
                    self._listing(folders[-1], step.path, step.listing)
            self._settle(folders[0], chain.fd)
        finally:
            chain.close()
            self._pool.shutdown(wait=True)
            self._blob_pool.shutdown(wait=True)
            os.close(root_fd)
        return self.stats

    def _wanted(self, path: bytes, is_dir: bool) -> tuple[bool, bool]:
        """(restore this entry, descend into it)."""
        if self._exclude.excluded(path):
            return False, False
        if self._include is None or self._include.excluded(path):
            return True, True
        # not matched itself: a directory may still hold matches
        return False, is_dir

    def _unreadable(self, folder: Step[Listing], exc: BackupfsError) -> None:
        self.stats.error(f"{shown(folder.path)}: cannot read directory listing: {exc}")

    def _listing(self, folder: _Folder, path: bytes, nodes: Listing) -> None:
        folder.listing = nodes
        for problem in nodes.problems:
            if problem.kind == SKIPPED and (problem.name is None or any(self._wanted(path + b"/" + problem.name, True))):
                self.stats.error(problem.text(shown(path)))

    def _entry(self, step: Step[Listing], chain: DirChain, folders: list[_Folder]) -> None:
        """One entry, made in the current folder (the walk's, and `chain`'s): a folder is made and
        entered, a file is created and its content handed to the pool, anything else is made."""
        node, path = step.node, step.path
        assert node is not None
        step.enter = False  # until the folder is made and open
        top = folders[-1]
        if top.lost:
            return
        if not node.is_safe_name():  # the reader rules leave such entries out: never reached
            self.stats.error(f"{shown(path.rpartition(b'/')[0])}: refusing entry with unsafe name")
            return
        take, descend = self._wanted(path, node.type == DIR)
        if not (take or descend):
            return
        repairs = top.listing.repairs_of(node.name) if top.listing is not None else []
        if node.type != DIR and (repairs or node.defect is not None):
            if take:
                why = [*repairs, *([f"cannot be read: {node.defect}"] if node.defect is not None else [])]
                self.stats.error(f"{os.fsdecode(path)}: not restored: {'; '.join(why)}")
            return
        dir_fd = chain.fd
        try:
            if node.type == DIR:
                self._flush(top, dir_fd)  # what waits for content must not wait for the whole subtree too
                fsmeta.create_node(dir_fd, node, exist_ok=True)
                if node.subtree is None:  # nothing to walk: done at once
                    top.restored += self._finish_dir(dir_fd, _Folder(node, take, repairs), path)
                    return
                chain.push(node.name, open_dir(dir_fd, node.name))
                folders.append(_Folder(node, take, repairs))
                step.enter = True
            elif not take:
                return
            elif node.type == FILE and _batchable(node):
                self._slots.acquire()  # released once its content is written: bounds open fds
                try:
                    top.batch.append((fsmeta.create_file(dir_fd, node), node, path))
                except BaseException:
                    self._slots.release()
                    raise
                top.batch_bytes += node.size
                if len(top.batch) >= _BATCH_FILES or top.batch_bytes >= _BATCH_BYTES:
                    self._flush(top, dir_fd)
                top.restored += 1
            elif node.type == FILE:
                top.pending.append(self._restore_file(dir_fd, node, path))
                top.restored += 1
            else:
                fsmeta.create_node(dir_fd, node)
                self._apply(dir_fd, node, path)
                self.stats.add(others=1)
                top.restored += 1
        except OSError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc.strerror or exc}")
        except IntegrityError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc}")
        except _BAD_VALUE as exc:
            self.stats.error(f"{os.fsdecode(path)}: {_bad_value(exc)}")

    def _leave(self, path: bytes, chain: DirChain, folders: list[_Folder]) -> None:
        """After a folder's contents: once they are written, back to its parent, which sets the
        folder's metadata."""
        folder = folders.pop()
        parent = folders[-1]
        self._settle(folder, chain.fd)  # (a lost folder has no batch left to hand over)
        try:
            chain.pop()
        except OSError as exc:
            parent.lost = True
            self.stats.error(f"{shown(path.rpartition(b'/')[0])}: {exc.strerror or exc}: the rest of it is not restored")
            return
        if parent.lost:
            return
        try:
            parent.restored += self._finish_dir(chain.fd, folder, path)
        except OSError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc.strerror or exc}")
        except _BAD_VALUE as exc:
            self.stats.error(f"{os.fsdecode(path)}: {_bad_value(exc)}")

    def _flush(self, folder: _Folder, dir_fd: int) -> None:
        """Hands the folder's batch of small files to the pool."""
        if folder.batch:
            folder.pending.append(self._pool.submit(self._write_batch, os.dup(dir_fd), folder.batch))
            folder.batch, folder.batch_bytes = [], 0

    def _settle(self, folder: _Folder, dir_fd: int) -> None:
        """Waits until every file of the folder is written (its metadata comes after them)."""
        self._flush(folder, dir_fd)
        for fut in folder.pending:
            fut.result()
        folder.pending.clear()

    def _finish_dir(self, dir_fd: int, folder: _Folder, path: bytes) -> int:
        """A restored folder's own metadata, set in its parent `dir_fd` once its contents are
        written; returns how many entries it and its contents count. One whose stored values
        the reader rules had to repair keeps the metadata it was created with (one bad value
        must not cost a whole tree); one without a listing is restored empty."""
        node = folder.node
        assert node is not None
        if not folder.take and folder.restored == 0:
            try:
                os.rmdir(node.name, dir_fd=dir_fd)
            except OSError:
                pass
            return 0
        if folder.repairs:
            self.stats.error(f"{os.fsdecode(path)}: metadata not restored: {'; '.join(folder.repairs)}")
        else:
            self._apply(dir_fd, node, path)
        if node.defect is not None:
            self.stats.error(f"{os.fsdecode(path)}: restored empty: {node.defect}")
        self.stats.add(dirs=1)
        return folder.restored + 1

    def _write_batch(self, dir_fd: int, batch: list[tuple[int, Node, bytes]]) -> bool:
        """Small files of one folder, each of one chunk at most: their chunks come in a few
        ranged reads (they were backed up next to each other), in one thread job, instead of
        a job and a backend request per file. Each file still fails or succeeds alone."""
        ok = True
        try:
            wanted = [node.content[0][1] for _fd, node, _path in batch if node.content]
            blobs = dict(zip(wanted, self.repo.load_data_blobs(wanted), strict=True)) if wanted else {}
            for fd, node, path in batch:
                ok = self._write_one(dir_fd, fd, node, path, _preloaded(node, blobs)) and ok
            if self._progress is not None:
                self._progress(self.stats)
            return ok
        finally:
            for fd, _node, _path in batch:
                os.close(fd)
                self._slots.release()
            os.close(dir_fd)

    def _apply(self, dir_fd: int, node: Node, path: bytes) -> None:
        for w in fsmeta.apply_metadata(dir_fd, node, owner=self._owner):
            self.stats.warnings.append(f"{os.fsdecode(path)}: {w}")

    def _restore_file(self, dir_fd: int, node: Node, path: bytes) -> Future[bool]:
        key = fsmeta.hardlink_key(node)
        first = self._hardlinks.get(key) if key is not None else None
        # The parent fd must outlive the job: duplicate it.
        self._slots.acquire()  # released by the job: bounds the fds that wait in the pool
        try:
            job_dir_fd = os.dup(dir_fd)
            if first is not None:
                return self._pool.submit(self._link_file, job_dir_fd, node, path, *first)
            try:
                fd = fsmeta.create_file(dir_fd, node)
            except BaseException:
                os.close(job_dir_fd)
                raise
        except BaseException:
            self._slots.release()
            raise
        fut = self._pool.submit(self._write_file, job_dir_fd, fd, node, path)
        if key is not None:
            self._hardlinks[key] = (path, fut)
        return fut

    def _link_file(self, dir_fd: int, node: Node, path: bytes, first: bytes, written: Future[bool]) -> bool:
        """Another name of an inode: linked only once its content is written and intact, so a
        damaged file never survives under a second name. (The first job was submitted earlier,
        so waiting for it in the same pool cannot deadlock.)"""
        try:
            if not written.result():
                self.stats.error(
                    f"{os.fsdecode(path)}: not restored: its content is shared with the damaged {os.fsdecode(first)}"
                )
                return False
            *folder, name = first.split(b"/")[1:]
            src_fd = open_beneath(self._root_fd, folder)  # by name: the path may pass PATH_MAX
            try:
                os.link(name, node.name, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            finally:
                os.close(src_fd)
            self.stats.add(files=1)
            return True
        except OSError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc.strerror or exc}")
            return False
        finally:
            os.close(dir_fd)
            self._slots.release()

    def _write_file(self, dir_fd: int, fd: int, node: Node, path: bytes) -> bool:
        """One file's job: its chunks streamed from the repository."""
        try:
            ok = self._write_one(dir_fd, fd, node, path, self._blobs(node.content or []))
        finally:
            os.close(fd)
            os.close(dir_fd)
            self._slots.release()
        if self._progress is not None:
            self._progress(self.stats)
        return ok

    def _write_one(self, dir_fd: int, fd: int, node: Node, path: bytes, chunks: Iterable[tuple[int, bytes]]) -> bool:
        """Writes content then metadata; a file whose content failed is removed. Returns whether
        the content is intact (hardlinks to it wait for that)."""
        ok = False
        try:
            ok = self._write_content(fd, node, path, chunks)
            if ok:
                for w in fsmeta.apply_metadata_fd(fd, node, owner=self._owner):
                    self.stats.warnings.append(f"{os.fsdecode(path)}: {w}")
                self.stats.add(files=1)
            else:
                os.unlink(node.name, dir_fd=dir_fd)
        except OSError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc.strerror or exc}")
        except _BAD_VALUE as exc:
            self.stats.error(f"{os.fsdecode(path)}: {_bad_value(exc)}")
        return ok

    def _blobs(self, content: list[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
        """(offset, plaintext) of a file's chunks; a large file's chunks are fetched and decrypted
        on the blob pool a few ahead, so one big file keeps every core busy."""
        if len(content) <= 2:
            for offset, blob_id in content:
                yield offset, self.repo.load_blob(DATA, blob_id)
            return
        window: deque[tuple[int, Future[bytes]]] = deque()
        try:
            for offset, blob_id in content:
                window.append((offset, self._blob_pool.submit(self.repo.load_blob, DATA, blob_id)))
                if len(window) > self._window:
                    off, fut = window.popleft()
                    yield off, fut.result()
            while window:
                off, fut = window.popleft()
                yield off, fut.result()
        finally:
            for _off, fut in window:
                fut.cancel()

    def _write_content(self, fd: int, node: Node, path: bytes, chunks: Iterable[tuple[int, bytes]]) -> bool:
        written = 0
        # a chunk gives the bytes up to the next one's offset, or the size (design.md 9)
        ends = [*(off for off, _bid in (node.content or [])[1:]), node.size]
        try:
            for (offset, data), end in zip(chunks, ends, strict=False):
                view = memoryview(data)[: max(end - offset, 0)]
                pos = offset
                while view:
                    n = os.pwrite(fd, view, pos)
                    view = view[n:]
                    pos += n
                written += pos - offset
            os.ftruncate(fd, node.size)
            if self._verify:
                self._verify_content(fd, node)
        except BackupfsError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc}")
            return False
        except OSError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc.strerror or exc}")
            return False
        self.stats.add(bytes_written=written)
        return True

    def _verify_content(self, fd: int, node: Node) -> None:
        """Re-reads what was written and checks every chunk against its keyed id."""
        os.fsync(fd)
        vfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for offset, blob_id in node.content or ():
                length = self.repo.index.raw_length(blob_id)
                if length is None:
                    raise IntegrityError(f"blob {blob_id.hex()[:16]} is not indexed")
                if self.repo.blob_id(os.pread(vfd, length, offset)) != blob_id:
                    raise IntegrityError(f"verification failed at offset {offset}")
            if os.fstat(vfd).st_size != node.size:
                raise IntegrityError("verification failed: wrong size")
        finally:
            os.close(vfd)
        self.stats.add(verified_files=1)


_BATCH_FILES = 32  # small files restored by one thread job, their chunks read together
_BATCH_BYTES = 4 << 20
_BATCH_FILE_MAX = 1 << 20  # a file of one chunk up to this size is restored in a batch; larger ones stream
_MAX_PENDING_FILES = 128  # files created and not yet written, over all jobs (each job holds 1-2 fds)


def _preloaded(node: Node, blobs: dict[bytes, bytes | Exception]) -> Iterator[tuple[int, bytes]]:
    """A batch file's chunks from what the batch read; a failed read raises its error here."""
    for offset, blob_id in node.content or ():
        data = blobs[blob_id]
        if isinstance(data, Exception):
            raise data
        yield offset, data


def _batchable(node: Node) -> bool:
    """A file restored in a batch: at most one chunk, small, and not one of several names
    (those wait for their first name's content)."""
    return len(node.content or ()) <= 1 and node.size <= _BATCH_FILE_MAX and fsmeta.hardlink_key(node) is None


# What the OS calls raise for values no file can have (a NUL in a symlink target or xattr name, a
# uid or time out of range): only a forged or buggy tree holds them, and it costs that entry only.
_BAD_VALUE = (ValueError, OverflowError)


def _bad_value(exc: Exception) -> str:
    return f"metadata in the snapshot cannot be restored: {exc}"
