"""The way back from damage: `repair index`, `repair packs` and `repair snapshots` (architecture.md 7).

Each writes before it deletes, in the order of format.md 12 and architecture.md 5, so a kill at any instant
leaves a repository every command can read, and running the repair again finishes it:

- `repair_index` rebuilds the index from the packs' own authenticated headers. New index files
  are written first, the last one superseding every index file there was (damaged ones too);
  only then are the old files deleted.
- `repair_packs` copies the blobs that still read back out of damaged packs into new packs,
  writes index files that replace the ones naming the damaged packs, then deletes those index
  files and the damaged packs. What could not be salvaged leaves the index, so the next backup
  stores it again wherever its source still has it.
- `repair_snapshots` writes, for each snapshot that names lost data, a new snapshot without it
  (a folder whose listing is lost is kept empty; a file's lost chunks become holes of zeros, its
  size unchanged) that records the original's id; the original is removed only with `forget`,
  after the new one is saved.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from backupfs.backends.base import FileType
from backupfs.errors import BackupfsError, IntegrityError, NotFound, UsageError
from backupfs.format.index import IndexFile
from backupfs.format.pack import DATA, TREE, PackEntry
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, FILE, Listing, Node
from backupfs.repository.packer import Packer
from backupfs.repository.repo import Repository

__all__ = [
    "PHASES",
    "REPAIRED_TAG",
    "IndexRepair",
    "PackRepair",
    "SnapshotRepair",
    "repair_index",
    "repair_packs",
    "repair_snapshots",
]

# Phase boundaries the hook is told about; the crash tests stop the process at each.
PHASES: Final = (
    "index:index-partial",
    "index:index-written",
    "index:old-index-deleted",
    "packs:packs-written",
    "packs:index-written",
    "packs:old-index-deleted",
    "packs:packs-deleted",
    "snapshots:snapshot-written",
)
INDEX_MAX_ENTRIES: Final = 50_000  # as prune writes them
HEADER_BATCH: Final = 256  # pack headers read per round: results wait in memory only this long
REPAIRED_TAG: Final = "repaired"

Hook = Callable[[str], None]
Log = Callable[[str], None]


def _no_hook(_phase: str) -> None:
    pass


def _quiet(_msg: str) -> None:
    pass


def _refuse_damaged_index(repo: Repository, what: str) -> None:
    """Repairs that decide what is lost must see the whole index: run `repair index` first."""
    if repo.damaged_index_files:
        name = next(iter(repo.damaged_index_files))
        raise IntegrityError(
            f"{what} needs a readable index, but index file {name[:8]} is damaged; run `backupfs repair index` first"
        )


# ---------------------------------------------------------------------------- repair index


@dataclasses.dataclass
class IndexRepair:
    packs: int = 0  # packs listed by the new index
    blobs: int = 0
    relisted: list[str] = dataclasses.field(default_factory=list)  # packs no readable index listed before
    from_old_index: list[str] = dataclasses.field(default_factory=list)  # header unreadable: old entries kept
    left_out: list[str] = dataclasses.field(default_factory=list)  # header unreadable and listed nowhere
    dropped: list[str] = dataclasses.field(default_factory=list)  # listed by the old index, file gone
    damaged_index_files: list[str] = dataclasses.field(default_factory=list)
    index_files_written: int = 0
    index_files_removed: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def repair_index(repo: Repository, *, dry_run: bool = False, log: Log = _quiet, hook: Hook = _no_hook) -> IndexRepair:
    """Rebuilds the index from every pack's own header (the caller holds the exclusive lock).

    A pack whose header cannot be read keeps the entries a readable index file gives it (its
    blobs may still read back: `repair packs` salvages them); one listed nowhere is left out.
    """
    result = IndexRepair(dry_run=dry_run)
    old = sorted(repo.file_names(FileType.INDEX))
    files, damaged = repo.load_index_files(old)
    result.damaged_index_files = sorted(damaged)
    superseded = {s for f in files.values() for s in f.supersedes}
    live_packs = {pid for name, f in files.items() if bytes.fromhex(name) not in superseded for pid in f.packs}
    present = sorted(repo.pack_files().items())
    log(f"reading the headers of {len(present)} packs")
    unreadable: list[str] = []

    def from_headers() -> Iterator[tuple[bytes, list[PackEntry]]]:
        for i in range(0, len(present), HEADER_BATCH):
            for name, _size, entries in repo.read_headers(present[i : i + HEADER_BATCH]):
                if isinstance(entries, IntegrityError) or not entries:
                    unreadable.append(name)
                    continue
                pid = bytes.fromhex(name)
                if pid not in live_packs:
                    result.relisted.append(name)
                yield pid, entries
        # packs whose header cannot be read: what a readable index file says (live ones first)
        for name in unreadable:
            pid = bytes.fromhex(name)
            listed = _listed_entries(files, superseded, pid)
            if listed is None:
                result.left_out.append(name)
                continue
            result.from_old_index.append(name)
            yield pid, listed

    present_names = {n for n, _ in present}
    result.dropped = sorted(pid.hex() for pid in live_packs if pid.hex() not in present_names)
    if dry_run:
        for _pid, entries in from_headers():
            result.packs += 1
            result.blobs += len(entries)
        return result

    def counted() -> Iterator[tuple[bytes, list[PackEntry]]]:
        for pid, entries in from_headers():
            result.packs += 1
            result.blobs += len(entries)
            yield pid, entries

    written = repo.save_index_files(counted(), [bytes.fromhex(n) for n in old], INDEX_MAX_ENTRIES, hook, "index")
    result.index_files_written = len(written)
    hook("index:index-written")
    # superseded by the last file written: readers ignore them whether or not they are gone yet
    stale = [n for n in old if n not in written]
    _remove_all(repo, FileType.INDEX, stale)
    result.index_files_removed = len(stale)
    hook("index:old-index-deleted")
    return result


def _listed_entries(files: dict[str, IndexFile], superseded: set[bytes], pid: bytes) -> list[PackEntry] | None:
    ordered = sorted(files.items(), key=lambda nf: bytes.fromhex(nf[0]) in superseded)
    for _name, f in ordered:
        entries = f.packs.get(pid)
        if entries:
            return list(entries)
    return None


def _remove_all(repo: Repository, ftype: FileType, names: Iterable[str]) -> None:
    repo.check_lock()  # with the lock lost, another process may rely on what is removed here
    for name in names:
        try:
            repo.remove_file(ftype, name)
        except NotFound:
            pass


# ---------------------------------------------------------------------------- repair packs


@dataclasses.dataclass
class PackRepair:
    packs: list[str] = dataclasses.field(default_factory=list)  # the damaged packs handled
    salvaged: int = 0  # blobs copied into new packs
    elsewhere: int = 0  # unreadable here, but a good copy exists in another pack
    lost: list[str] = dataclasses.field(default_factory=list)  # blob ids (hex) gone for good
    packs_written: int = 0
    index_files_written: int = 0
    index_files_removed: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def repair_packs(
    repo: Repository, refs: list[str], *, dry_run: bool = False, log: Log = _quiet, hook: Hook = _no_hook
) -> PackRepair:
    """Salvages the blobs of the named packs that still read back into new packs, and takes the
    packs (and what could not be read) out of the index (the caller holds the exclusive lock;
    the index is loaded)."""
    _refuse_damaged_index(repo, "repair packs")
    result = PackRepair(dry_run=dry_run)
    present = repo.pack_files()
    files, _damaged = repo.load_index_files(sorted(repo.file_names(FileType.INDEX)))
    superseded = {s for f in files.values() for s in f.supersedes}
    live = {n: f for n, f in files.items() if bytes.fromhex(n) not in superseded}
    known = set(present) | {pid.hex() for f in live.values() for pid in f.packs}
    targets = [_resolve_pack(ref, known) for ref in refs]
    targets = list(dict.fromkeys(targets))
    result.packs = targets
    target_ids = {bytes.fromhex(t) for t in targets}
    salvaged: list[tuple[bytes, list[PackEntry]]] = []

    def upload(name: str, data: bytes, entries: list[PackEntry]) -> None:
        repo.save_pack(name, data)
        salvaged.append((bytes.fromhex(name), entries))

    packer = None if dry_run else Packer(repo.cipher, repo.config.pack_size, upload, uploaders=2, max_in_flight=2)
    try:
        for name in targets:
            entries = _pack_entries(repo, name, present.get(name), live)
            data = _load_whole(repo, name) if name in present else b""
            log(f"pack {name[:16]}: {len(entries)} blobs")
            for e in entries:
                envelope = data[e.offset : e.offset + e.length]
                try:
                    if len(envelope) != e.length:
                        raise IntegrityError("beyond the end of the pack")
                    repo.open_verified(e.type, e.id, envelope, name, e.raw_length)
                except IntegrityError:
                    if _good_copy_elsewhere(repo, e, target_ids):
                        result.elsewhere += 1
                    else:
                        result.lost.append(e.id.hex())
                    continue
                result.salvaged += 1
                if packer is not None:
                    packer.add(e.type, e.id, envelope, e.raw_length)
        if packer is not None:
            packer.flush()
    except BaseException:
        if packer is not None:
            packer.close()
            for pid, _entries in salvaged:  # in no index yet: garbage
                _remove_quietly(repo, FileType.DATA, pid.hex())
        raise
    if packer is not None:
        packer.close()
    result.packs_written = len(salvaged)
    if dry_run:
        return result
    hook("packs:packs-written")
    # index files naming a damaged pack are replaced by one without it, with the new packs
    affected = sorted(n for n, f in live.items() if target_ids & f.packs.keys())
    keep = [(pid, es) for n in affected for pid, es in live[n].packs.items() if pid not in target_ids]
    written: list[str] = []
    if keep or salvaged:
        written = repo.save_index_files(
            [*keep, *salvaged], [bytes.fromhex(n) for n in affected], INDEX_MAX_ENTRIES, hook, "packs"
        )
    elif affected:  # nothing left to list: an index file superseding them (an empty `packs` is valid)
        written = repo.save_index_files([], [bytes.fromhex(n) for n in affected], INDEX_MAX_ENTRIES, hook, "packs")
    result.index_files_written = len(written)
    hook("packs:index-written")
    _remove_all(repo, FileType.INDEX, [n for n in affected if n not in written])
    result.index_files_removed = len(affected)
    hook("packs:old-index-deleted")
    _remove_all(repo, FileType.DATA, [t for t in targets if t in present])
    hook("packs:packs-deleted")
    return result


def _resolve_pack(ref: str, known: set[str]) -> str:
    ref = ref.lower()
    if len(ref) < 8 or any(c not in "0123456789abcdef" for c in ref):
        raise UsageError(f"invalid pack id {ref!r} (at least 8 hex digits, as check prints them)")
    found = [n for n in known if n.startswith(ref)]
    if not found:
        raise UsageError(f"no pack matches {ref!r}")
    if len(found) > 1:
        raise UsageError(f"pack id {ref!r} is ambiguous ({len(found)} matches)")
    return found[0]


def _pack_entries(repo: Repository, name: str, size: int | None, live: dict[str, IndexFile]) -> list[PackEntry]:
    """What a pack holds: its own header, else what the index says (its blobs may still read)."""
    if size is not None:
        try:
            return repo.pack_header(name, size)
        except IntegrityError:
            pass
    pid = bytes.fromhex(name)
    for f in live.values():
        entries = f.packs.get(pid)
        if entries:
            return list(entries)
    return []


def _load_whole(repo: Repository, name: str) -> bytes:
    try:
        return repo.load_pack(name)
    except NotFound:
        return b""


def _good_copy_elsewhere(repo: Repository, e: PackEntry, exclude: set[bytes]) -> bool:
    for loc in repo.index.locations(e.id):
        if loc.pack_id in exclude:
            continue
        try:
            repo.load_blob_at(e.type, e.id, loc)
            return True
        except IntegrityError:
            continue
    return False


def _remove_quietly(repo: Repository, ftype: FileType, name: str) -> None:
    try:
        repo.remove_file(ftype, name)
    except BackupfsError:
        pass


# ---------------------------------------------------------------------------- repair snapshots


@dataclasses.dataclass
class SnapshotRepair:
    """Per snapshot: what was dropped, and the id of the snapshot written in its place."""

    snapshot: str
    new_id: str | None = None
    lost_folders: list[str] = dataclasses.field(default_factory=list)  # kept empty
    damaged_files: list[str] = dataclasses.field(default_factory=list)  # lost chunks are now holes
    dropped_entries: list[str] = dataclasses.field(default_factory=list)  # unreadable entries left out
    unrepairable: str | None = None  # why nothing could be written (root folder or file lost)
    forgotten: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.lost_folders or self.damaged_files or self.dropped_entries)

    def as_dict(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "changed": self.changed}


def repair_snapshots(
    repo: Repository,
    snapshots: list[tuple[str, Snapshot | None]],
    *,
    forget: bool = False,
    dry_run: bool = False,
    log: Log = _quiet,
    hook: Hook = _no_hook,
) -> list[SnapshotRepair]:
    """Rewrites each snapshot whose trees name lost or unreadable data (a snapshot of None: its
    file could not be read, reported as unrepairable). The index must be whole and loaded."""
    _refuse_damaged_index(repo, "repair snapshots")
    rewriter = _Rewriter(repo, dry_run)
    out: list[SnapshotRepair] = []
    for sid, snap in snapshots:
        rep = SnapshotRepair(sid)
        out.append(rep)
        if snap is None:
            rep.unrepairable = "the snapshot file cannot be read"
            continue
        log(f"snapshot {sid[:8]}")
        root = rewriter.rewrite(snap.tree, rep)
        if root is None:
            rep.unrepairable = "its root folder cannot be read: nothing of it is left"
            continue
        if not rep.changed:
            continue
        if dry_run:
            continue
        repo.flush()  # trees first, indexed, then the snapshot (format.md 12)
        summary = {**snap.summary, "repaired_folders": len(rep.lost_folders), "repaired_files": len(rep.damaged_files)}
        new = dataclasses.replace(
            snap,
            tree=root,
            tags=sorted({*snap.tags, REPAIRED_TAG}),
            summary=summary,
            repaired=bytes.fromhex(sid),
        )
        rep.new_id = repo.save_snapshot(new)
        hook("snapshots:snapshot-written")
        if forget:
            _remove_all(repo, FileType.SNAPSHOT, [sid])
            rep.forgotten = True
    return out


class _Rewriter:
    """Trees rewritten without what is lost, each tree once (snapshots share most of them).

    The walk is iterative (a frame per open folder), so a deep tree costs no recursion; a folder
    that contains itself (a forged cycle) is cut there and kept empty.
    """

    def __init__(self, repo: Repository, dry_run: bool) -> None:
        self.repo = repo
        self.dry_run = dry_run
        self.done: dict[bytes, bytes | None] = {}  # tree id -> its replacement (itself if whole)
        self.now_ns = time.time_ns()  # the change time of the files it repairs
        self._empty: bytes | None = None

    def empty_tree(self) -> bytes:
        if self._empty is None:
            self._empty = b"\0" * 32 if self.dry_run else self.repo.save_tree([])
        return self._empty

    def rewrite(self, root: bytes, rep: SnapshotRepair) -> bytes | None:
        """The replacement of `root` (itself when nothing under it is lost), or None when the
        root listing itself cannot be read."""
        if root in self.done:
            return self.done[root]
        frames: list[_Frame] = []
        on_path: set[bytes] = set()  # the trees of `frames`: a cycle is found in O(1), not O(depth)
        start = self._open(root, None, b"", rep)
        if start is None:
            self.done[root] = None
            return None
        frames.append(start)
        on_path.add(root)
        while frames:
            frame = frames[-1]
            child = frame.step(self, rep)
            if child is not None:
                tid, name = child
                if tid in on_path:  # a cycle: cut here, on this path only
                    frame.child_result(None, self)
                    rep.lost_folders.append(frame.child_path(name))
                    continue
                sub = self._open(tid, frame, name, rep)
                if sub is None:
                    self.done[tid] = None
                    frame.child_result(None, self)
                    rep.lost_folders.append(frame.child_path(name))
                else:
                    frames.append(sub)
                    on_path.add(tid)
                continue
            frames.pop()
            on_path.discard(frame.tree_id)
            result = frame.finish(self)
            self.done[frame.tree_id] = result
            if frames:
                frames[-1].child_result(result, self)
        return self.done[root]

    def _open(self, tree_id: bytes, parent: _Frame | None, name: bytes, rep: SnapshotRepair) -> _Frame | None:
        loc = self.repo.index.lookup(tree_id)
        if loc is None or loc.type != TREE:
            return None
        try:
            listing = self.repo.load_tree(tree_id)
        except BackupfsError:
            return None
        frame = _Frame(tree_id, parent, name, listing)
        for problem in listing.problems:
            if problem.kind == "skipped":
                rep.dropped_entries.append(problem.text(frame.path()))
                frame.changed = True
        if listing.problems or listing.unsorted:
            frame.changed = True  # rewritten as the reader rules show it
        return frame

    def chunk_ok(self, blob_id: bytes) -> bool:
        """A chunk is lost when no copy is indexed as file data, or every copy is in a pack
        a local check found it damaged in (architecture.md 4)."""
        locs = self.repo.index.locations(blob_id)
        if not locs or all(loc.type != DATA for loc in locs):
            return False
        bad = self.repo.damaged_copies(blob_id)
        return any(loc.pack_id not in bad for loc in locs)


class _Frame:
    """One folder being rewritten: its listing, how far the walk is, the nodes kept so far.

    It holds its name and parent, not its path: paths are made only for messages, so a walk
    10,000 levels deep keeps O(depth) bytes of names, not O(depth^2) of paths."""

    __slots__ = ("changed", "listing", "name", "nodes", "parent", "pos", "tree_id", "waiting")

    def __init__(self, tree_id: bytes, parent: _Frame | None, name: bytes, listing: Listing) -> None:
        self.tree_id = tree_id
        self.parent = parent
        self.name = name
        self.listing = listing
        self.pos = 0
        self.nodes: list[Node] = []
        self.changed = False
        self.waiting: Node | None = None  # a folder node whose subtree is being rewritten

    def path(self) -> str:
        names: list[bytes] = []
        frame: _Frame | None = self
        while frame is not None and frame.parent is not None:
            names.append(frame.name)
            frame = frame.parent
        return "/" + "/".join(os.fsdecode(n) for n in reversed(names))

    def child_path(self, name: bytes) -> str:
        return self.path().rstrip("/") + "/" + os.fsdecode(name)

    def step(self, rw: _Rewriter, rep: SnapshotRepair) -> tuple[bytes, bytes] | None:
        """Handles entries until one needs its subtree rewritten: returns (its tree, its name),
        or None when the folder is done."""
        while self.pos < len(self.listing):
            node = self.listing[self.pos]
            self.pos += 1
            if node.defect is not None and node.type != DIR:
                rep.dropped_entries.append(f"{self.child_path(node.name)}: cannot be read: {node.defect}")
                self.changed = True
                continue
            if node.type == DIR:
                if node.subtree is None:  # no listing (or a malformed one): an empty folder
                    if node.defect is not None:
                        node.subtree = rw.empty_tree()
                        node.defect = None
                        self.changed = True
                    self.nodes.append(node)
                    continue
                if node.subtree in rw.done:
                    self._put_dir(node, rw.done[node.subtree], rw, rep)
                    continue
                self.waiting = node
                return node.subtree, node.name
            if node.type == FILE and node.content:
                kept = [(off, bid) for off, bid in node.content if rw.chunk_ok(bid)]
                if len(kept) != len(node.content):
                    rep.damaged_files.append(
                        f"{self.child_path(node.name)}: {len(node.content) - len(kept)} of {len(node.content)} chunks lost"
                    )
                    node.content = kept
                    # its change time is now: the next backup's parent check (inode, size, mtime,
                    # ctime) then fails, and the file is read again from the source, not reused
                    node.ctime_ns = rw.now_ns
                    self.changed = True
            self.nodes.append(node)
        return None

    def child_result(self, new: bytes | None, rw: _Rewriter) -> None:
        """The folder node waiting for its subtree gets the rewritten one (an empty folder when
        its listing is lost)."""
        node = self.waiting
        assert node is not None
        self.waiting = None
        replacement = rw.empty_tree() if new is None else new
        if replacement != node.subtree:
            self.changed = True
            node.subtree = replacement
        self.nodes.append(node)

    def _put_dir(self, node: Node, new: bytes | None, rw: _Rewriter, rep: SnapshotRepair) -> None:
        if new is None:
            rep.lost_folders.append(self.child_path(node.name))
        self.waiting = node
        self.child_result(new, rw)

    def finish(self, rw: _Rewriter) -> bytes:
        if not self.changed:
            return self.tree_id
        if rw.dry_run:
            return b"\1" * 32  # stands for "a new tree"
        return rw.repo.save_tree(self.nodes)
