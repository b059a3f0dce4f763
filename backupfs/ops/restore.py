"""Restore a snapshot (or part of it) into a target directory, which may already hold files.

Safety: every entry is reached relative to an fd of its parent directory, opened with O_NOFOLLOW,
so neither a hostile tree (`..`, `/` in names) nor a symlink in the tree or planted in the target
can make it write outside the target. New files are created with O_EXCL; an entry that is already
there is never written through: a file is replaced by writing a new one under a temporary name in
the same folder and renaming it over the old (atomic: a symlink is replaced, not followed, and a
failed write leaves the old file as it was), a folder in the way of a file is removed first, a
symlink or file in the way of a folder is removed (unlinked, not followed) and the folder made.
Directory metadata is applied post-order, once every entry inside is written.

What happens to entries already in the target (`Overwrite`, restic 0.17's --overwrite):
`always` replaces every file whose content differs, read back and compared chunk by chunk with
the snapshot's (so an unchanged file is not written again); `if-changed` trusts a file whose
size and modification time match without reading it; `if-newer` replaces only entries older
than the snapshot's; `never` keeps everything there. Entries kept under `always`/`if-changed`
get the snapshot's metadata. With `delete`, entries of a restored folder that the snapshot does
not have are removed (never followed: a symlink goes, not its target).

Cost: a folder is made only once something in it is restored, and with --include only the
folders on the way to what the patterns can match are walked (`Excluder.may_match_below`).

Depth: the tree is walked by `walk.walk` (iterative) and the folders' fds are kept by a
`dirfds.DirChain`, which holds only the deepest few open; no path is used past the target
itself, so a tree deeper than PATH_MAX allows restores like any other.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import os
import stat
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from backupfs.errors import BackupfsError, IntegrityError, UsageError
from backupfs.format.pack import DATA
from backupfs.format.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SKIPPED, SYMLINK, Listing, Node
from backupfs.ops import fsmeta
from backupfs.ops.dirfds import DirChain, open_beneath, open_dir, remove_tree
from backupfs.ops.excludes import Excluder
from backupfs.ops.packreader import PackReader
from backupfs.ops.walk import Kind, Step, shown, walk
from backupfs.repository.repo import Repository


class Overwrite(enum.Enum):
    ALWAYS = "always"
    IF_CHANGED = "if-changed"
    IF_NEWER = "if-newer"
    NEVER = "never"


# What a restore did (or, in a dry run, would do) to an entry of the target.
ADDED, UPDATED, UNCHANGED, DELETED = "added", "updated", "unchanged", "deleted"

# Told of each entry as it is decided: the action, the entry's path in the snapshot (below the
# restored folder), its node (None for one deleted). Called from several threads.
ActionSink = Callable[[str, bytes, Node | None], None]


@dataclasses.dataclass
class RestoreStats:
    """`files`, `dirs`, `others` count entries written (or, in a dry run, to be written); `added`,
    `updated`, `unchanged`, `deleted` count entries of any type by what happened to them."""

    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes_written: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    integrity_errors: int = 0  # those of `errors` that are about the snapshot's data, not the target
    warnings: list[str] = dataclasses.field(default_factory=list)
    verified_files: int = 0
    # progress only (not in the summary): files found there already with the snapshot's content,
    # so that files and bytes done reach the snapshot's totals when a restore writes nothing
    kept_files: int = 0
    kept_bytes: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def error(self, msg: str, integrity: bool = False) -> None:
        with self._lock:
            self.errors.append(msg)
            self.integrity_errors += integrity

    def add(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)


class _State(enum.Enum):
    PENDING = "pending"  # on the way to what is restored: made only once something inside is
    OPEN = "open"  # in the target, and open in the chain
    VIRTUAL = "virtual"  # dry run: not in the target (or to be replaced): all inside would be added


@dataclasses.dataclass(slots=True, eq=False)
class _Folder:
    """A folder being restored (the target itself first): its listing and the files that wait
    for their content. `take`: matched itself (not only on the way to a match)."""

    node: Node | None
    take: bool
    repairs: list[str]
    state: _State
    listing: Listing | None = None
    pending: list[Future[bool]] = dataclasses.field(default_factory=list)
    batch: list[tuple[int, Node, bytes]] = dataclasses.field(default_factory=list)  # created, waiting for content
    batch_bytes: int = 0
    lost: bool = False  # it could not be made or had again: the rest of it is not restored


class _Decision(enum.Enum):
    KEEP = "keep"  # leave the entry there as it is
    KEEP_META = "keep-meta"  # leave it, give it the snapshot's metadata
    REPLACE = "replace"
    COMPARE = "compare"  # a regular file of the right size: read it to know


class Restorer:
    def __init__(
        self,
        repo: Repository,
        tree: bytes,
        target: str,
        *,
        includes: list[str] | None = None,
        excludes: list[str] | None = None,
        only: Collection[bytes] | None = None,
        verify: bool = False,
        overwrite: Overwrite = Overwrite.ALWAYS,
        delete: bool = False,
        dry_run: bool = False,
        workers: int = 4,
        progress: Callable[[RestoreStats], None] | None = None,
        on_action: ActionSink | None = None,
    ) -> None:
        self.repo = repo
        self.tree = tree
        self.target = os.path.abspath(target)
        if only is not None and includes:
            raise ValueError("a restore takes either include patterns or exact paths")
        self._include = Excluder(includes) if includes else None
        self._exclude = Excluder(excludes or [])
        # exact paths (a drill's sample, ops/verify.py): those, and only the folders on their way
        self._only = frozenset(only) if only is not None else None
        self._only_dirs = frozenset(_ancestors(only or ()))
        self._verify = verify
        self._overwrite = overwrite
        self._delete = delete
        self._dry_run = dry_run
        self._owner = os.geteuid() == 0
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="bfs-restore")
        # file content comes by runs of packs, planned before the walk (packreader.py); a dry
        # run reads none
        self._reader: PackReader | None = None
        if not dry_run:
            self._reader = PackReader(repo, repo.storage_info().reads_in_flight)
        # first restored name of each multiply-linked inode, and the job writing its content
        self._hardlinks: dict[tuple[int, int], tuple[bytes, Future[bool]]] = {}
        self._progress = progress
        self._on_action = on_action
        self._action_lock = threading.Lock()
        # files created but not yet written: each holds an fd until its job is done
        self._slots = threading.BoundedSemaphore(_MAX_PENDING_FILES)
        self._root_fd = -1
        self.stats = RestoreStats()

    def run(self) -> RestoreStats:
        try:
            if self._reader is not None:
                self._reader.plan(self._planned_files())
                self._reader.start()
            return self._run()
        finally:
            if self._reader is not None:
                self._reader.close()

    def _planned_files(self) -> Iterator[list[bytes]]:
        """The chunk ids of each file the walk will write, in its order (as `_entry` decides,
        short of what the target holds: a file kept there only leaves its chunks unread)."""
        seen_links: set[tuple[int, int]] = set()
        for step in walk(self.repo.load_tree, self.tree, on_error=lambda _folder, _exc: None):
            node = step.node
            assert node is not None
            take, descend = self._wanted(step.path, node.type == DIR)
            if node.type == DIR:
                step.enter = descend or take
            elif take and node.type == FILE and node.content:
                key = fsmeta.hardlink_key(node)
                if key is not None:
                    if key in seen_links:
                        continue  # linked to its first name, not written again
                    seen_links.add(key)
                yield [blob_id for _offset, blob_id in node.content]

    def _run(self) -> RestoreStats:
        root_fd = self._open_target()
        self._root_fd = root_fd
        chain = DirChain(root_fd) if root_fd >= 0 else None
        root_state = _State.OPEN if root_fd >= 0 else _State.VIRTUAL
        folders = [_Folder(None, take=self._include is None, repairs=[], state=root_state)]
        try:
            for step in walk(self.repo.load_tree, self.tree, listings=True, post_order=True, on_error=self._unreadable):
                if step.kind is Kind.ENTRY:
                    self._entry(step, chain, folders)
                elif step.kind is Kind.LEAVE:
                    self._leave(step.path, chain, folders)
                else:
                    assert step.listing is not None
                    self._listing(folders[-1], step.path, step.listing, chain)
            if chain is not None:
                self._settle(folders[0], chain.fd)
        finally:
            if chain is not None:
                chain.close()
            self._pool.shutdown(wait=True)
            if root_fd >= 0:
                os.close(root_fd)
        return self.stats

    def _open_target(self) -> int:
        """The target folder's fd, made if need be; -1 in a dry run whose target is not there."""
        if not self._dry_run:
            try:
                os.makedirs(self.target, exist_ok=True)
            except FileExistsError:
                raise UsageError(f"restore target {self.target} exists and is not a folder") from None
            except OSError as exc:
                raise BackupfsError(f"cannot make the restore target {self.target}: {exc.strerror}") from exc
        try:
            return os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if self._dry_run:
                return -1
            raise
        except NotADirectoryError:
            raise UsageError(f"restore target {self.target} exists and is not a folder") from None

    # ---------------------------------------------------------------- the walk

    def _wanted(self, path: bytes, is_dir: bool) -> tuple[bool, bool]:
        """(restore this entry, descend into it)."""
        if self._only is not None:
            return path in self._only, is_dir and path in self._only_dirs
        if self._exclude.excluded(path):
            return False, False
        if self._include is None or self._include.excluded(path):
            return True, True
        # not matched itself: a folder is walked only if a pattern can match inside it
        return False, is_dir and self._include.may_match_below(path)

    def _unreadable(self, folder: Step[Listing], exc: BackupfsError) -> None:
        self.stats.error(f"{shown(folder.path)}: cannot read directory listing: {exc}", integrity=True)

    def _listing(self, folder: _Folder, path: bytes, nodes: Listing, chain: DirChain | None) -> None:
        folder.listing = nodes
        for problem in nodes.problems:
            if problem.kind == SKIPPED and (
                problem.name is None or any(self._wanted(path + b"/" + problem.name, True))
            ):
                self.stats.error(problem.text(shown(path)), integrity=True)
        if self._delete and folder.take and folder.state is _State.OPEN and not folder.lost:
            assert chain is not None
            self._delete_extras(path, nodes, chain.fd)

    def _entry(self, step: Step[Listing], chain: DirChain | None, folders: list[_Folder]) -> None:
        """One entry of the current folder (the walk's): a folder is entered (made once something
        in it is restored), a file is written or its content handed to the pool, anything else
        is made."""
        node, path = step.node, step.path
        assert node is not None
        step.enter = False  # until the folder is set up
        top = folders[-1]
        if top.lost:
            return
        if not node.is_safe_name():  # the reader rules leave such entries out: never reached
            self.stats.error(f"{shown(path.rpartition(b'/')[0])}: refusing entry with unsafe name", integrity=True)
            return
        take, descend = self._wanted(path, node.type == DIR)
        if not (take or descend):
            return
        repairs = top.listing.repairs_of(node.name) if top.listing is not None else []
        if node.type != DIR and (repairs or node.defect is not None):
            if take:
                why = [*repairs, *([f"cannot be read: {node.defect}"] if node.defect is not None else [])]
                self.stats.error(f"{os.fsdecode(path)}: not restored: {'; '.join(why)}", integrity=True)
            return
        if node.type == DIR and not take and node.subtree is None:
            return  # only on the way, and nothing inside
        try:
            if take and not self._materialize(folders, chain, path):
                return
            if node.type == DIR:
                folder = _Folder(node, take, repairs, _State.PENDING)
                if take:
                    self._make_dir(top, folder, chain, path)
                    if folder.lost:
                        return
                if node.subtree is None:  # nothing to walk: done at once
                    if folder.state is not _State.PENDING:
                        self._done_dir(chain, folder, path, pushed=False)
                    return
                if folder.state is _State.OPEN:
                    assert chain is not None
                    chain.push(node.name, open_dir(chain.fd, node.name))
                folders.append(folder)
                step.enter = True
            elif top.state is _State.VIRTUAL:
                self._would_add(node, path)
            else:
                assert chain is not None
                self._restore_entry(top, chain.fd, node, path)
        except OSError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc.strerror or exc}")
        except IntegrityError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc}", integrity=True)
        except _BAD_VALUE as exc:
            self.stats.error(f"{os.fsdecode(path)}: {_bad_value(exc)}", integrity=True)

    def _materialize(self, folders: list[_Folder], chain: DirChain | None, path: bytes) -> bool:
        """Makes the folders on the way to `path` that are not made yet (the stack's last few);
        False if one cannot be (said so): nothing more of it is restored."""
        first = len(folders)
        while first > 0 and folders[first - 1].state is _State.PENDING:
            first -= 1
        if first == len(folders):
            return True  # the usual case: the folder is there already
        names = path.split(b"/")
        for i in range(first, len(folders)):
            folder = folders[i]
            where = b"/".join(names[: i + 1])
            try:
                self._make_dir(folders[i - 1], folder, chain, where)
                if folder.state is _State.OPEN:
                    assert chain is not None and folder.node is not None
                    chain.push(folder.node.name, open_dir(chain.fd, folder.node.name))
            except OSError as exc:
                self.stats.error(f"{os.fsdecode(where)}: {exc.strerror or exc}: nothing in it is restored")
                folder.state = _State.PENDING
                folder.lost = True
            if folder.lost:
                for later in folders[i + 1 :]:
                    later.lost = True
                return False
        return True

    def _make_dir(self, parent: _Folder, folder: _Folder, chain: DirChain | None, path: bytes) -> None:
        """Makes `folder` in `parent` (the current folder of `chain`) or takes the one that is
        there; sets its state (the caller opens an OPEN one). An entry of another type in the
        way is replaced, unless --overwrite never keeps it (the folder is then lost)."""
        node = folder.node
        assert node is not None
        if parent.state is _State.VIRTUAL:
            folder.state = _State.VIRTUAL
            self._tell(ADDED, path, node)
            return
        assert chain is not None
        dir_fd = chain.fd
        self._flush(parent, dir_fd)  # what waits for content must not wait for the whole subtree too
        if not self._dry_run:
            try:
                os.mkdir(node.name, 0o700, dir_fd=dir_fd)
            except FileExistsError:
                pass
            else:
                folder.state = _State.OPEN
                self._tell(ADDED, path, node)
                return
        try:
            st: os.stat_result | None = os.stat(node.name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is None:  # dry run: it would be made
            folder.state = _State.VIRTUAL
            self._tell(ADDED, path, node)
        elif stat.S_ISDIR(st.st_mode):
            folder.state = _State.OPEN
            self._tell(UNCHANGED, path, node)
        elif self._overwrite is Overwrite.NEVER:
            folder.lost = True
            self.stats.error(f"{os.fsdecode(path)}: not a folder in the target, kept (--overwrite never)")
        elif self._dry_run:
            folder.state = _State.VIRTUAL
            self._tell(UPDATED, path, node)
        else:
            os.unlink(node.name, dir_fd=dir_fd)  # a file or symlink in the way: itself, never its target
            os.mkdir(node.name, 0o700, dir_fd=dir_fd)
            folder.state = _State.OPEN
            self._tell(UPDATED, path, node)

    def _leave(self, path: bytes, chain: DirChain | None, folders: list[_Folder]) -> None:
        """After a folder's contents: once they are written, back to its parent, which sets the
        folder's metadata."""
        folder = folders.pop()
        if folder.state is _State.PENDING:
            return  # nothing in it was restored: it was never made
        self._done_dir(chain, folder, path, pushed=folder.state is _State.OPEN)

    def _done_dir(self, chain: DirChain | None, folder: _Folder, path: bytes, pushed: bool) -> None:
        if pushed:
            assert chain is not None
            self._settle(folder, chain.fd)  # (a lost folder has no batch left to hand over)
            try:
                chain.pop()
            except OSError as exc:
                self.stats.error(
                    f"{shown(path.rpartition(b'/')[0])}: {exc.strerror or exc}: the rest of it is not restored"
                )
                return
        self.stats.add(dirs=1)
        if folder.state is not _State.OPEN or self._dry_run:
            return
        assert chain is not None
        try:
            self._finish_dir(chain.fd, folder, path)
        except OSError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc.strerror or exc}")
        except _BAD_VALUE as exc:
            self.stats.error(f"{os.fsdecode(path)}: {_bad_value(exc)}", integrity=True)

    def _finish_dir(self, dir_fd: int, folder: _Folder, path: bytes) -> None:
        """A restored folder's own metadata, set in its parent `dir_fd` once its contents are
        written. One whose stored values the reader rules had to repair keeps the metadata it
        was created with (one bad value must not cost a whole tree); one without a listing is
        restored empty."""
        node = folder.node
        assert node is not None
        if folder.repairs:
            self.stats.error(f"{os.fsdecode(path)}: metadata not restored: {'; '.join(folder.repairs)}", integrity=True)
        else:
            self._apply(dir_fd, node, path)
        if node.defect is not None:
            self.stats.error(f"{os.fsdecode(path)}: restored empty: {node.defect}", integrity=True)

    def _delete_extras(self, path: bytes, nodes: Listing, dir_fd: int) -> None:
        """--delete: what the folder holds in the target and the snapshot does not (an entry
        the snapshot has but could not show is kept, and so is one the excludes leave out)."""
        keep = {n.name for n in nodes} | {p.name for p in nodes.problems if p.name is not None}
        try:
            names = sorted(os.fsencode(n) for n in os.listdir(dir_fd))
        except OSError as exc:
            self.stats.error(f"{shown(path)}: cannot list it to delete what the snapshot does not have: {exc.strerror}")
            return
        for name in names:
            if name in keep:
                continue
            child = path + b"/" + name
            if self._exclude.excluded(child):
                continue
            try:
                if not self._dry_run:
                    remove_tree(dir_fd, name)
            except OSError as exc:
                self.stats.error(f"{os.fsdecode(child)}: not deleted: {exc.strerror or exc}")
                continue
            self._tell(DELETED, child, None)

    # ---------------------------------------------------------------- entries

    def _would_add(self, node: Node, path: bytes) -> None:
        """Dry run, in a folder that is not in the target: the entry would be made."""
        if node.type == FILE:
            self.stats.add(files=1, bytes_written=node.size)
        else:
            self.stats.add(others=1)
        self._tell(ADDED, path, node)

    def _restore_entry(self, top: _Folder, dir_fd: int, node: Node, path: bytes) -> None:
        """A file or other entry of the open folder `dir_fd`: made if the name is free, else
        what --overwrite says is done with the entry there."""
        if self._dry_run:
            try:
                st = os.stat(node.name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                self._would_add(node, path)
                return
            self._existing(top, dir_fd, node, path, st)
            return
        if node.type == FILE and fsmeta.hardlink_key(node) in self._hardlinks:
            top.pending.append(self._restore_file(dir_fd, node, path))
            return
        try:
            if node.type == FILE and _batchable(node):
                self._slots.acquire()  # released once its content is written: bounds open fds
                try:
                    top.batch.append((fsmeta.create_file(dir_fd, node), node, path))
                except BaseException:
                    self._slots.release()
                    raise
                self._tell(ADDED, path, node)
                top.batch_bytes += node.size
                if len(top.batch) >= _BATCH_FILES or top.batch_bytes >= _BATCH_BYTES:
                    self._flush(top, dir_fd)
            elif node.type == FILE:
                top.pending.append(self._restore_file(dir_fd, node, path))
            else:
                fsmeta.create_node(dir_fd, node)
                self._tell(ADDED, path, node)
                self._apply(dir_fd, node, path)
                self.stats.add(others=1)
        except FileExistsError:
            self._existing(top, dir_fd, node, path, os.stat(node.name, dir_fd=dir_fd, follow_symlinks=False))

    def _existing(self, top: _Folder, dir_fd: int, node: Node, path: bytes, st: os.stat_result) -> None:
        """`node`'s name is taken in the target by the entry `st` describes."""
        decision = self._decide(dir_fd, node, st)
        if decision in (_Decision.KEEP, _Decision.KEEP_META):
            if decision is _Decision.KEEP_META and not self._dry_run:
                self._apply(dir_fd, node, path)
            self._tell(UNCHANGED, path, node)
            key = fsmeta.hardlink_key(node)
            if key is not None and key not in self._hardlinks:
                self._hardlinks[key] = (path, _done(True))
            return
        if stat.S_ISDIR(st.st_mode) and not self._dry_run:
            self._clear_folder(dir_fd, node.name)
        if node.type == FILE:
            top.pending.append(self._update_file(dir_fd, node, path, compare=decision is _Decision.COMPARE))
        elif self._dry_run:
            self.stats.add(others=1)
            self._tell(UPDATED, path, node)
        else:
            tmp = _temp_name()
            fsmeta.create_node(dir_fd, dataclasses.replace(node, name=tmp))
            _rename_over(dir_fd, tmp, node.name)
            self._apply(dir_fd, node, path)
            self.stats.add(others=1)
            self._tell(UPDATED, path, node)

    def _decide(self, dir_fd: int, node: Node, st: os.stat_result) -> _Decision:
        """What --overwrite does with the entry `st` where `node` belongs. Folders are merged,
        never decided here; a folder in the way of anything else is replaced only if it is
        empty or with --delete (OSError otherwise)."""
        policy = self._overwrite
        if policy is Overwrite.NEVER or (policy is Overwrite.IF_NEWER and st.st_mtime_ns >= node.mtime_ns):
            return _Decision.KEEP
        if stat.S_ISDIR(st.st_mode):
            if not self._delete and not _is_empty(dir_fd, node.name):
                raise OSError(errno.ENOTEMPTY, "a folder that is not empty is in the way (--delete replaces it)")
            return _Decision.REPLACE
        if policy is Overwrite.IF_NEWER:
            return _Decision.REPLACE
        if node.type == FILE:
            if not stat.S_ISREG(st.st_mode) or st.st_size != node.size:
                return _Decision.REPLACE
            if policy is Overwrite.IF_CHANGED and st.st_mtime_ns == node.mtime_ns:
                return _Decision.KEEP_META
            return _Decision.COMPARE
        if node.type == SYMLINK:
            same = stat.S_ISLNK(st.st_mode) and os.readlink(node.name, dir_fd=dir_fd) == node.link_target
        elif node.type == FIFO:
            same = stat.S_ISFIFO(st.st_mode)
        elif node.type in (CHARDEV, BLOCKDEV):
            kind = stat.S_ISCHR if node.type == CHARDEV else stat.S_ISBLK
            same = kind(st.st_mode) and st.st_rdev == node.rdev
        else:
            same = False
        return _Decision.KEEP_META if same else _Decision.REPLACE

    def _clear_folder(self, dir_fd: int, name: bytes) -> None:
        """A folder in the way of a file: removed whole with --delete, else only if empty."""
        if self._delete:
            remove_tree(dir_fd, name)
        else:
            os.rmdir(name, dir_fd=dir_fd)

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

    def _tell(self, action: str, path: bytes, node: Node | None) -> None:
        """Counts the action and tells the sink, if any."""
        if action == UNCHANGED and node is not None and node.type == FILE:
            self.stats.add(unchanged=1, kept_files=1, kept_bytes=node.size)
        else:
            self.stats.add(**{action: 1})
        if self._on_action is not None:
            with self._action_lock:
                self._on_action(action, path, node)

    # ---------------------------------------------------------------- file content

    def _write_batch(self, dir_fd: int, batch: list[tuple[int, Node, bytes]]) -> bool:
        """Small files of one folder, each of one chunk at most, in one thread job instead of a
        job per file (their chunks come from the pack reader's runs). Each file still fails or
        succeeds alone."""
        ok = True
        try:
            blobs: dict[bytes, bytes | Exception] = {}
            for _fd, node, _path in batch:
                if node.content and node.content[0][1] not in blobs:
                    blobs[node.content[0][1]] = self._blob_or_error(node.content[0][1])
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
        self._tell(ADDED, path, node)
        fut = self._pool.submit(self._write_file, job_dir_fd, fd, node, path)
        if key is not None:
            self._hardlinks[key] = (path, fut)
        return fut

    def _update_file(self, dir_fd: int, node: Node, path: bytes, compare: bool) -> Future[bool]:
        """A file whose name is taken: compared (if `compare`) and replaced on the pool."""
        self._slots.acquire()
        try:
            job_dir_fd = os.dup(dir_fd)
        except BaseException:
            self._slots.release()
            raise
        fut = self._pool.submit(self._update_job, job_dir_fd, node, path, compare)
        key = fsmeta.hardlink_key(node)
        if key is not None and key not in self._hardlinks:
            self._hardlinks[key] = (path, fut)
        return fut

    def _update_job(self, dir_fd: int, node: Node, path: bytes, compare: bool) -> bool:
        """Keeps the file there if its content is the snapshot's (giving it the snapshot's
        metadata), else writes the snapshot's under a temporary name and renames it over."""
        try:
            if compare and self._keep_if_same(dir_fd, node, path):
                return True
            if self._dry_run:
                self.stats.add(files=1, bytes_written=node.size)
                self._tell(UPDATED, path, node)
                return True
            tmp = _temp_name()
            fd = fsmeta.create_file(dir_fd, dataclasses.replace(node, name=tmp))
            try:
                ok = self._write_content(fd, node, path, self._blobs(node.content or []))
                if ok:
                    for w in fsmeta.apply_metadata_fd(fd, node, owner=self._owner):
                        self.stats.warnings.append(f"{os.fsdecode(path)}: {w}")
                    _rename_over(dir_fd, tmp, node.name)
                    tmp = b""
                    self.stats.add(files=1)
                    self._tell(UPDATED, path, node)
            finally:
                os.close(fd)
                if tmp:
                    os.unlink(tmp, dir_fd=dir_fd)
            return ok
        except OSError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc.strerror or exc}")
            return False
        except _BAD_VALUE as exc:
            self.stats.error(f"{os.fsdecode(path)}: {_bad_value(exc)}", integrity=True)
            return False
        finally:
            os.close(dir_fd)
            self._slots.release()
            if self._progress is not None:
                self._progress(self.stats)

    def _keep_if_same(self, dir_fd: int, node: Node, path: bytes) -> bool:
        """Whether the file there already holds the snapshot's content; it then gets the
        snapshot's metadata (not in a dry run) and counts as unchanged."""
        try:
            fd = os.open(node.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return False  # replaced meanwhile, or unreadable: written anew
        try:
            if not self._same_content(fd, node):
                return False
            if not self._dry_run:
                for w in fsmeta.apply_metadata_fd(fd, node, owner=self._owner):
                    self.stats.warnings.append(f"{os.fsdecode(path)}: {w}")
        finally:
            os.close(fd)
        self._tell(UNCHANGED, path, node)
        return True

    def _same_content(self, fd: int, node: Node) -> bool:
        """The bytes restore would write, compared with what `fd` holds: each chunk's range
        hashed and checked against its keyed id, the rest (holes) zeros. Anything unexpected
        (a chunk the index does not know, chunks out of order) answers no: the file is written."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != node.size:
            return False
        content = node.content or []
        pos = 0
        for j, (offset, blob_id) in enumerate(content):
            end = content[j + 1][0] if j + 1 < len(content) else node.size
            length = self.repo.index.raw_length(blob_id)
            if length is None or offset < pos or length > end - offset or length > self.repo.max_blob_size(DATA):
                return False
            if not _zeros(fd, pos, offset):
                return False
            data = os.pread(fd, length, offset)
            if len(data) != length or self.repo.blob_id(data) != blob_id:
                return False
            pos = offset + length
        return _zeros(fd, pos, node.size)

    def _link_file(self, dir_fd: int, node: Node, path: bytes, first: bytes, written: Future[bool]) -> bool:
        """Another name of an inode: linked only once its content is written and intact, so a
        damaged file never survives under a second name. (The first job was submitted earlier,
        so waiting for it in the same pool cannot deadlock.) A name that is taken gets the link
        under a temporary name, renamed over it."""
        try:
            if not written.result():
                self.stats.error(
                    f"{os.fsdecode(path)}: not restored: its content is shared with the damaged {os.fsdecode(first)}",
                    integrity=True,
                )
                return False
            *folder, name = first.split(b"/")[1:]
            src_fd = open_beneath(self._root_fd, folder)  # by name: the path may pass PATH_MAX
            try:
                self._link(src_fd, name, dir_fd, node, path)
            finally:
                os.close(src_fd)
            return True
        except OSError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc.strerror or exc}")
            return False
        finally:
            os.close(dir_fd)
            self._slots.release()

    def _link(self, src_fd: int, name: bytes, dir_fd: int, node: Node, path: bytes) -> None:
        try:
            os.link(name, node.name, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            pass
        else:
            self.stats.add(files=1)
            self._tell(ADDED, path, node)
            return
        st = os.stat(node.name, dir_fd=dir_fd, follow_symlinks=False)
        src = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        # a second name that is not this inode is linked anew, unless --overwrite keeps it
        if (st.st_dev, st.st_ino) == (src.st_dev, src.st_ino) or self._decide(dir_fd, node, st) is _Decision.KEEP:
            self._tell(UNCHANGED, path, node)
            return
        if stat.S_ISDIR(st.st_mode):
            self._clear_folder(dir_fd, node.name)
        tmp = _temp_name()
        os.link(name, tmp, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        try:
            _rename_over(dir_fd, tmp, node.name)
        except OSError:
            os.unlink(tmp, dir_fd=dir_fd)
            raise
        self.stats.add(files=1)
        self._tell(UPDATED, path, node)

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
            self.stats.error(f"{os.fsdecode(path)}: {_bad_value(exc)}", integrity=True)
        return ok

    def _blobs(self, content: list[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
        """(offset, plaintext) of a file's chunks, from the pack reader (packreader.py: read
        ahead by runs of packs while earlier files are written)."""
        reader = self._reader
        for offset, blob_id in content:
            yield offset, reader.get(blob_id) if reader is not None else self.repo.load_blob(DATA, blob_id)

    def _blob_or_error(self, blob_id: bytes) -> bytes | Exception:
        """A batch's blob, or the error that fails the files needing it (and only them)."""
        try:
            return self._reader.get(blob_id) if self._reader is not None else self.repo.load_blob(DATA, blob_id)
        except IntegrityError as exc:
            return exc

    def _write_content(self, fd: int, node: Node, path: bytes, chunks: Iterable[tuple[int, bytes]]) -> bool:
        written = 0
        # a chunk gives the bytes up to the next one's offset, or the size (format.md 9)
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
            self.stats.error(f"{os.fsdecode(path)}: {exc}", integrity=True)
            return False
        except OSError as exc:
            self.stats.error(f"{os.fsdecode(path)}: {exc.strerror or exc}")
            return False
        self.stats.add(bytes_written=written)
        return True

    def _verify_content(self, fd: int, node: Node) -> None:
        """Re-reads what was written and checks every chunk against its keyed id.

        What the filesystem gives back, from its page cache: no fsync first, which would not
        change what is read (only make it durable) and cost 5 times the write and read of a
        small file (docs/usage.md, restore)."""
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
_ZERO_PIECE = 1 << 20  # bytes of a hole read at once when comparing a file that is there
_TEMP_PREFIX = b".backupfs-restore-"


def _preloaded(node: Node, blobs: dict[bytes, bytes | Exception]) -> Iterator[tuple[int, bytes]]:
    """A batch file's chunks from what the batch read; a failed read raises its error here."""
    for offset, blob_id in node.content or ():
        data = blobs[blob_id]
        if isinstance(data, Exception):
            raise data
        yield offset, data


def _ancestors(paths: Iterable[bytes]) -> Iterator[bytes]:
    """The folders leading to each of `paths` (`/a/b/c` gives `/a` and `/a/b`)."""
    for path in paths:
        head = path.rpartition(b"/")[0]
        while head:
            yield head
            head = head.rpartition(b"/")[0]


def _batchable(node: Node) -> bool:
    """A file restored in a batch: at most one chunk, small, and not one of several names
    (those wait for their first name's content)."""
    return len(node.content or ()) <= 1 and node.size <= _BATCH_FILE_MAX and fsmeta.hardlink_key(node) is None


def _zeros(fd: int, start: int, end: int) -> bool:
    """Whether bytes [start, end) of `fd` are all there and all zero."""
    while start < end:
        piece = os.pread(fd, min(_ZERO_PIECE, end - start), start)
        if not piece or piece.count(0) != len(piece):
            return False
        start += len(piece)
    return True


def _is_empty(dir_fd: int, name: bytes) -> bool:
    fd = open_dir(dir_fd, name)
    try:
        return not os.listdir(fd)
    finally:
        os.close(fd)


def _temp_name() -> bytes:
    """A name for a replacement made beside the entry it replaces (same folder: the rename is
    atomic); random, so nobody can plant something there in advance (O_EXCL refuses it anyway)."""
    return _TEMP_PREFIX + os.urandom(8).hex().encode()


def _rename_over(dir_fd: int, tmp: bytes, name: bytes) -> None:
    """Puts `tmp` in place of `name` in one step: what was there (a file, a symlink: never
    followed) is gone at the same moment."""
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _done(value: bool) -> Future[bool]:
    fut: Future[bool] = Future()
    fut.set_result(value)
    return fut


# What the OS calls raise for values no file can have (a NUL in a symlink target or xattr name, a
# uid or time out of range): only a forged or buggy tree holds them, and it costs that entry only.
_BAD_VALUE = (ValueError, OverflowError)


def _bad_value(exc: Exception) -> str:
    return f"metadata in the snapshot cannot be restored: {exc}"
