"""Copy snapshots into another repository with its own keys (`backupfs copy`, 3-2-1 off-site).

Blob ids are keyed per repository (format.md 3), so the same plaintext has different ids in the
two repositories: every data blob is mapped src id -> dst id by hashing its plaintext with the
destination's id key, and every tree is rewritten bottom-up with the new ids. Reading all data
again for every nightly copy would be ruinous, so the mapping is learnt cheaply where possible:

- within a run, every mapped blob and tree is remembered;
- a snapshot whose parent (or an older snapshot of the same host and paths) was copied before is
  walked side by side with that earlier copy: an unchanged subtree maps to the copy's subtree and
  an unchanged file to the copy's content list without reading any data. Only what changed since
  is downloaded.

A destination snapshot records its source in `original`; a source snapshot whose origin is
already there is skipped, so copying again adds nothing.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from backupfs.crypto import MasterKey
from backupfs.format.pack import DATA
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import Node
from backupfs.ops.walk import Kind, walk
from backupfs.repository.repo import Repository


def chunking_like(src: Repository) -> tuple[MasterKey, tuple[int, int, int]]:
    """A fresh master key that cuts chunks exactly as `src` does (same chunker secret and params).

    Only the chunker secret is shared: encryption and id keys stay independent, so knowing one
    repository's password reveals nothing about the other's contents.
    """
    return MasterKey(os.urandom(32), os.urandom(32), src.master.chunker), src.config.chunker


def origin(sid: str, snap: Snapshot) -> bytes:
    """The id a snapshot is known by across copies: the first repository's snapshot id."""
    return snap.original or bytes.fromhex(sid)


@dataclasses.dataclass
class CopyStats:
    copied: int = 0
    skipped: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    trees_written: int = 0  # folder listings saved in the destination (re-encrypted, or changed)


@dataclasses.dataclass(frozen=True, slots=True)
class _Ref:
    """A source tree and the destination tree it was copied to earlier."""

    src: bytes
    dst: bytes


@dataclasses.dataclass(slots=True, eq=False)
class _Folder:
    """A source folder being copied: its entries rewritten so far, and its sub-folders' earlier
    copies by name."""

    tree_id: bytes
    ref: _Ref | None
    node: Node | None  # its entry in the destination (subtree set once saved); None for the root
    out: list[Node] = dataclasses.field(default_factory=list)
    pairs: dict[bytes, _Ref] = dataclasses.field(default_factory=dict)


class Copier:
    """Copies snapshots from `src` to `dst`; one instance per run shares the id mapping."""

    def __init__(
        self, src: Repository, dst: Repository, *, workers: int = 6, log: Callable[[str], None] | None = None
    ) -> None:
        self.src = src
        self.dst = dst
        self.stats = CopyStats()
        self._log = log or (lambda _m: None)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="bfs-copy")
        self._data: dict[bytes, bytes] = {}
        self._trees: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self._src_snaps: dict[str, Snapshot] = {}
        # origin -> (destination snapshot id, snapshot)
        self.copies: dict[bytes, tuple[str, Snapshot]] = {}
        for dsid, dsnap in dst.list_snapshots():
            self.copies.setdefault(origin(dsid, dsnap), (dsid, dsnap))
            self.copies.setdefault(bytes.fromhex(dsid), (dsid, dsnap))  # copying back and forth

    def copy_all(self, snapshots: list[tuple[str, Snapshot]], source_snapshots: list[tuple[str, Snapshot]]) -> None:
        """Copies `snapshots` oldest first (parents before children) and skips those already there."""
        self._src_snaps = dict(source_snapshots)
        for sid, snap in sorted(snapshots, key=lambda p: (p[1].time_ns, p[0])):
            existing = self.copies.get(origin(sid, snap))
            if existing is not None:
                self.stats.skipped += 1
                self._log(f"snapshot {sid[:8]} is already in the destination as {existing[0][:8]}")
                continue
            dsid = self.copy_snapshot(sid, snap)
            self._log(f"copied snapshot {sid[:8]} of {', '.join(snap.paths)} as {dsid[:8]}")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Copier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def copy_snapshot(self, sid: str, snap: Snapshot) -> str:
        ref = self._reference(sid, snap)
        tree = self._copy_tree(snap.tree, ref)
        self.dst.flush()  # packs and index before the snapshot that needs them (format.md 12)
        parent = None
        if snap.parent is not None:
            parent_snap = self._src_snaps.get(snap.parent.hex())
            key = origin(snap.parent.hex(), parent_snap) if parent_snap else snap.parent
            copied_parent = self.copies.get(key)
            parent = bytes.fromhex(copied_parent[0]) if copied_parent else None
        new = dataclasses.replace(snap, tree=tree, parent=parent, original=origin(sid, snap))
        dsid = self.dst.save_snapshot(new)
        self.copies[origin(sid, snap)] = (dsid, new)
        self.stats.copied += 1
        return dsid

    def _reference(self, sid: str, snap: Snapshot) -> _Ref | None:
        """An earlier copy to diff against: the parent's, else the newest of the same host and paths."""
        candidates: list[tuple[str, Snapshot]] = []
        if snap.parent is not None and snap.parent.hex() in self._src_snaps:
            candidates.append((snap.parent.hex(), self._src_snaps[snap.parent.hex()]))
        same = [
            (s, o)
            for s, o in self._src_snaps.items()
            if s != sid and o.host == snap.host and sorted(o.paths) == sorted(snap.paths) and o.time_ns <= snap.time_ns
        ]
        candidates += sorted(same, key=lambda p: p[1].time_ns, reverse=True)
        for csid, csnap in candidates:
            copied = self.copies.get(origin(csid, csnap))
            if copied is not None:
                return _Ref(csnap.tree, copied[1].tree)
        return None

    # ------------------------------------------------------------------ trees and blobs

    def _copy_tree(self, tree_id: bytes, ref: _Ref | None) -> bytes:
        """The destination's id of source tree `tree_id`, copied bottom-up (a folder's listing
        names its sub-folders' new ids, so each is saved after them) in one walk."""
        root = self._known(tree_id, ref)
        if root is not None:
            return root
        folders = [_Folder(tree_id, ref, None)]
        for step in walk(self.src.load_tree_as_stored, tree_id, listings=True, post_order=True):
            node = step.node
            if step.kind is Kind.LISTING:
                assert step.listing is not None
                self._prepare(folders[-1], step.listing)
            elif step.kind is Kind.LEAVE:
                done = folders.pop()
                assert done.node is not None
                done.node.subtree = self._save(done)
                folders[-1].out.append(done.node)
            else:
                assert node is not None
                folder = folders[-1]
                # `fh` is keyed with the source's id key, and keying it for the destination would
                # mean reading every file whole: copied files are verified chunk by chunk
                new = dataclasses.replace(node, file_hash=None)
                if node.content is not None:
                    new.content = [(off, self._data[bid]) for off, bid in node.content]
                if step.enter and node.subtree is not None:
                    sub_ref = folder.pairs.get(node.name)
                    known = self._known(node.subtree, sub_ref)
                    if known is None:
                        folders.append(_Folder(node.subtree, sub_ref, new))
                        continue
                    step.enter = False
                    new.subtree = known
                folder.out.append(new)
        return self._save(folders[0])

    def _known(self, tree_id: bytes, ref: _Ref | None) -> bytes | None:
        """The copy of a tree already made: in this run, or unchanged since an earlier copy
        (then nothing of it needs reading)."""
        known = self._trees.get(tree_id)
        if known is None and ref is not None and ref.src == tree_id:
            known = self._trees[tree_id] = ref.dst
        return known

    def _prepare(self, folder: _Folder, nodes: list[Node]) -> None:
        """Before a folder's entries: what its earlier copy tells, and its files' data mapped."""
        ref = folder.ref
        if ref is not None:
            ref_dst = {n.name: n for n in self.dst.load_tree(ref.dst)}
            pairs: dict[bytes, tuple[Node, Node]] = {}
            for n in self.src.load_tree(ref.src):
                d = ref_dst.get(n.name)
                if d is not None and d.type == n.type:
                    pairs[n.name] = (n, d)
            self._learn_from_pairs(pairs.values())
            folder.pairs = {
                name: _Ref(s.subtree, d.subtree)
                for name, (s, d) in pairs.items()
                if s.subtree is not None and d.subtree is not None
            }
        self._map_data([bid for n in nodes for _off, bid in n.content or ()])

    def _save(self, folder: _Folder) -> bytes:
        dst_id = self.dst.save_tree(folder.out)
        self.stats.trees_written += 1
        self._trees[folder.tree_id] = dst_id
        return dst_id

    def _learn_from_pairs(self, pairs: Iterable[tuple[Node, Node]]) -> None:
        """Files of the earlier copy map blob for blob (same offsets: same cut, same plaintext)."""
        for s, d in pairs:
            if not s.content or not d.content or len(s.content) != len(d.content):
                continue
            if all(so == do for (so, _), (do, _) in zip(s.content, d.content, strict=True)):
                for (_o, sbid), (_p, dbid) in zip(s.content, d.content, strict=True):
                    self._data.setdefault(sbid, dbid)

    def _map_data(self, blob_ids: list[bytes]) -> None:
        todo = list(dict.fromkeys(b for b in blob_ids if b not in self._data))
        for src_id, dst_id in zip(todo, self._pool.map(self._copy_blob, todo), strict=True):
            self._data[src_id] = dst_id

    def _copy_blob(self, src_id: bytes) -> bytes:
        plaintext = self.src.load_blob(DATA, src_id)
        dst_id, _added = self.dst.save_blob(DATA, plaintext)
        with self._lock:
            self.stats.blobs_read += 1
            self.stats.bytes_read += len(plaintext)
        return dst_id
