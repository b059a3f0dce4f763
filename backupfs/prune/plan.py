"""Plan a prune: find what the remaining snapshots use, and decide what to delete and repack.

`plan_prune()` only reads (so `--dry-run` is "plan and print", and the plan can be tested on its
own). It loads every index file into one compact table (`table.BlobTable`), walks every
snapshot's trees once, marks the blobs in use, and decides which packs to delete (nothing in
use), which to repack (much unused) and which unindexed packs are left-overs of killed backups.
`execute.execute()` carries the plan out.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from backupfs.backends.base import FileType
from backupfs.errors import BackupfsError, IntegrityError
from backupfs.format import index as index_fmt
from backupfs.format.pack import TREE
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, Node, decode_tree
from backupfs.prune.options import PruneOptions
from backupfs.prune.table import BlobTable
from backupfs.repository.masterindex import BlobLocation
from backupfs.repository.repo import Repository

__all__ = [
    "REPACK_REASONS",
    "Log",
    "PackInfo",
    "PrunePlan",
    "PruneRefused",
    "PruneStats",
    "plan_prune",
]

T = TypeVar("T")
R = TypeVar("R")

TREE_READERS = 4

Log = Callable[[str], None]
_DEFAULT_OPTIONS = PruneOptions()


class PruneRefused(IntegrityError):
    """Prune cannot see all data the snapshots need; deleting anything could destroy some of it."""


@dataclasses.dataclass(slots=True)
class PackInfo:
    """One indexed pack; its entries are records start..start+count of the blob table."""

    id: bytes
    start: int
    count: int
    type: int
    size: int  # file size in the backend, -1 when the file is missing
    blob_bytes: int = 0
    used_count: int = 0
    used_bytes: int = 0
    reason: str = ""  # why it is repacked: one of REPACK_REASONS

    @property
    def unused_bytes(self) -> int:
        return self.blob_bytes - self.used_bytes

    @property
    def unused_share(self) -> float:
        """Unused share of the pack's blob bytes, 0..1."""
        return self.unused_bytes / max(1, self.blob_bytes)


# Why a pack is repacked: a tree pack with anything unused; a data pack needed to get the repository
# under --max-unused; a data pack at or above --repack-threshold on its own.
REPACK_REASONS = ("tree", "max-unused", "threshold")

@dataclasses.dataclass(slots=True)
class PruneStats:
    snapshots: int = 0
    trees: int = 0
    packs: int = 0
    blobs: int = 0
    size: int = 0  # bytes of all indexed packs present
    used_blobs: int = 0
    used_bytes: int = 0
    unused_blobs: int = 0
    unused_bytes: int = 0
    duplicate_blobs: int = 0
    delete_packs: int = 0
    delete_bytes: int = 0
    repack_packs: int = 0
    repack_bytes: int = 0  # size of the packs repacked (read)
    repack_used_bytes: int = 0  # live blob bytes they hold (rewritten)
    unindexed_packs: int = 0
    unindexed_bytes: int = 0
    missing_packs: int = 0  # indexed, file gone, nothing in use: only dropped from the index
    obsolete_index_files: int = 0
    index_files: int = 0
    size_after: int = 0
    unused_after: int = 0
    # filled by execute()
    packs_repacked: int = 0  # read and copied so far (progress)
    packs_written: int = 0
    bytes_written: int = 0
    index_files_written: int = 0

    executed: bool = False

    @property
    def freed_bytes(self) -> int:
        """Pack bytes deleted minus pack bytes written (estimated from the plan until executed)."""
        written = self.bytes_written if self.executed else self.repack_used_bytes
        return self.unindexed_bytes + self.delete_bytes + self.repack_bytes - written

    def as_dict(self) -> dict[str, int]:
        d: dict[str, int] = dataclasses.asdict(self)
        d["freed_bytes"] = self.freed_bytes
        return d


@dataclasses.dataclass(slots=True, eq=False)
class PrunePlan:
    """What prune will do; `execute.execute()` does it. Holds the blob table the planner built
    and its marks (one byte per record: in use)."""

    repo: Repository
    opts: PruneOptions
    table: BlobTable
    keep: list[PackInfo]
    delete: list[PackInfo]
    repack: list[PackInfo]
    used: bytearray
    unindexed: list[str]
    index_files: list[str]
    obsolete_index_files: list[str]
    stats: PruneStats

    @property
    def nothing_to_do(self) -> bool:
        return not (self.delete or self.repack or self.unindexed or self.obsolete_index_files)


def plan_prune(
    repo: Repository,
    opts: PruneOptions = _DEFAULT_OPTIONS,
    *,
    ignore_snapshots: Iterable[str] = (),
    log: Log = lambda _m: None,
) -> PrunePlan:
    """Reads the repository (which must be locked exclusively) and decides what to delete and repack.

    `ignore_snapshots` are treated as already forgotten (`forget --prune --dry-run`).
    Raises PruneRefused, naming the snapshot, if any snapshot's trees or blobs cannot be found.
    """
    planner = _Planner(repo, opts, log)
    return planner.run(frozenset(ignore_snapshots))


class _Planner:
    def __init__(self, repo: Repository, opts: PruneOptions, log: Log) -> None:
        self.repo = repo
        self.opts = opts
        self.log = log
        self.table = BlobTable()
        self.used = bytearray()
        self.packs: list[PackInfo] = []
        self._starts: list[int] = []
        self.stats = PruneStats()

    def run(self, ignore: frozenset[str]) -> PrunePlan:
        self.log("loading index files")
        index_names, obsolete = self._load_index()
        present = dict(self.repo.backend.list(FileType.DATA))
        indexed = set()
        for p in self.packs:
            h = p.id.hex()
            indexed.add(h)
            p.size = present.get(h, -1)
        unindexed = sorted((n, s) for n, s in present.items() if n not in indexed)
        self.log("loading snapshots")
        snapshots = self._load_snapshots(ignore)
        self.stats.snapshots = len(snapshots)
        self.log(f"finding data in use by {len(snapshots)} snapshots")
        self._mark(snapshots)
        self._count()
        self._dedupe()
        self._count()
        delete, repack, keep = self._choose()
        s = self.stats
        s.index_files = len(index_names)
        s.obsolete_index_files = len(obsolete)
        s.unindexed_packs = len(unindexed)
        s.unindexed_bytes = sum(size for _n, size in unindexed)
        return PrunePlan(
            self.repo,
            self.opts,
            self.table,
            keep=keep,
            delete=delete,
            repack=repack,
            used=self.used,
            unindexed=[n for n, _s in unindexed],
            index_files=index_names,
            obsolete_index_files=obsolete,
            stats=s,
        )

    # ---------------------------------------------------------------- index

    def _load_index(self) -> tuple[list[str], list[str]]:
        """Returns (live index files, superseded ones); fills the table and the pack list."""
        names = sorted(n for n, _s in self.repo.backend.list(FileType.INDEX))
        superseded: set[bytes] = set()
        per_file: dict[str, list[tuple[bytes, int, int]]] = {}

        def load(name: str) -> bytes:
            return self.repo.load_file(FileType.INDEX, name, index_fmt.AAD)

        for name, plain in _bounded_map(load, names, 4):
            try:
                supersedes, per_file[name] = self.table.add_index_file(plain)
            except IntegrityError as exc:
                raise PruneRefused(
                    f"refusing to prune: index file {name} is damaged ({exc}); nothing was deleted. Run `backupfs check`"
                ) from exc
            superseded.update(supersedes)
        live = [n for n in names if bytes.fromhex(n) not in superseded]
        obsolete = [n for n in names if bytes.fromhex(n) in superseded]
        seen: set[bytes] = set()
        for name in live:
            for pid, start, count in per_file[name]:
                if pid in seen or count == 0:
                    continue
                seen.add(pid)
                btype = self.table.entry(start).type
                self.packs.append(PackInfo(pid, start, count, btype, -1))
        self.packs.sort(key=lambda p: p.start)
        self._starts = [p.start for p in self.packs]
        self.table.build_hash((p.start, p.count) for p in self.packs)
        self.used = bytearray(len(self.table))
        self.stats.packs = len(self.packs)
        return live, obsolete

    def _pack_of(self, g: int) -> PackInfo:
        return self.packs[bisect.bisect_right(self._starts, g) - 1]

    # ---------------------------------------------------------------- snapshots and trees

    def _load_snapshots(self, ignore: frozenset[str]) -> list[tuple[str, Snapshot]]:
        out = []
        for name, _size in sorted(self.repo.backend.list(FileType.SNAPSHOT)):
            if name in ignore:
                continue
            try:
                out.append((name, self.repo.load_snapshot(name)))
            except BackupfsError as exc:
                raise PruneRefused(
                    f"refusing to prune: snapshot {name[:8]} cannot be read ({exc}); nothing was deleted. "
                    "Run `backupfs check`, and `backupfs forget` the snapshot if it is beyond repair"
                ) from exc
        return out

    def _mark(self, snapshots: Sequence[tuple[str, Snapshot]]) -> None:
        """Marks every blob reachable from the snapshots; each tree is read once.

        Trees are fetched by a few threads (a remote backend answers each in tens of
        milliseconds); decoding and marking happen here, in one thread.
        """
        problems: list[str] = []
        with ThreadPoolExecutor(TREE_READERS, thread_name_prefix="bfs-prune-tree") as pool:
            for sid, snap in snapshots:
                try:
                    self._mark_tree(snap.tree, pool)
                except _Missing as exc:
                    problems.append(f"snapshot {sid[:8]}: {exc}")
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise PruneRefused(
                "refusing to prune, nothing was deleted: cannot read all data of "
                + "; ".join(problems[:3])
                + more
                + ". Run `backupfs check`; forget the damaged snapshots or restore the missing files first"
            )

    def _mark_tree(self, root: bytes, pool: ThreadPoolExecutor) -> None:
        table, used = self.table, self.used
        find = table.find
        todo: deque[tuple[bytes, str]] = deque([(root, "/")])
        running: dict[Future[list[Node]], str] = {}
        try:
            while todo or running:
                while todo and len(running) < 4 * TREE_READERS:
                    tid, path = todo.popleft()
                    g = find(tid)
                    if g < 0:
                        raise _Missing(f"tree {tid.hex()[:16]} of {path} is not in the index")
                    if not used[g]:
                        used[g] = 1  # claimed: no other walk loads it again
                        running[pool.submit(self._load_tree, g, tid, path)] = path
                if not running:
                    continue
                done, _pending = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    path = running.pop(fut)
                    nodes = fut.result()
                    self.stats.trees += 1
                    base = path.rstrip("/") + "/"
                    for node in nodes:
                        if node.type == DIR:
                            if node.subtree is not None:
                                todo.append((node.subtree, base + node.name.decode("utf-8", "backslashreplace")))
                        elif node.content:
                            for _off, bid in node.content:
                                b = find(bid)
                                if b < 0:
                                    name = base + node.name.decode("utf-8", "backslashreplace")
                                    raise _Missing(f"{name}: data blob {bid.hex()[:16]} is not in the index")
                                used[b] = 1
        finally:
            for fut in running:
                fut.cancel()
            wait(running)

    def _load_tree(self, g: int, tid: bytes, path: str) -> list[Node]:
        """Tries each indexed copy of the tree: one may sit in a pack that is gone."""
        error: Exception | None = None
        for c in self.table.copies(g):
            e = self.table.entry(c)
            pack = self._pack_of(c)
            try:
                raw = self.repo.load_blob_at(TREE, tid, BlobLocation(pack.id, TREE, e.offset, e.length, e.raw_length))
                return decode_tree(raw)
            except BackupfsError as exc:
                error = exc
        raise _Missing(f"tree {tid.hex()[:16]} of {path} cannot be read: {error}")

    # ---------------------------------------------------------------- accounting

    def _count(self) -> None:
        used = self.used
        for p in self.packs:
            lengths = self.table.lengths(p.start, p.count)
            flags = used[p.start : p.start + p.count]
            p.blob_bytes = sum(lengths)
            p.used_count = sum(flags)
            p.used_bytes = sum(n for n, u in zip(lengths, flags, strict=True) if u)

    def _dedupe(self) -> None:
        """Of a blob stored several times, keeps the copy in the fullest pack that exists."""
        table, used = self.table, self.used
        missing: list[str] = []
        for first, others in table.dups.items():
            self.stats.duplicate_blobs += len(others)
            if not used[first]:
                continue
            candidates = [g for g in (first, *others) if self._pack_of(g).size >= 0]
            if not candidates:
                continue  # reported below as a used blob in a missing pack
            best = max(candidates, key=lambda g: _fullness(self._pack_of(g)))
            used[first] = 0
            used[best] = 1
        for p in self.packs:
            if p.size < 0 and any(used[g] for g in range(p.start, p.start + p.count)):
                missing.append(p.id.hex())
        if missing:
            raise PruneRefused(
                f"refusing to prune, nothing was deleted: pack {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + " is missing but holds data that snapshots need. Run `backupfs check`"
            )

    def _choose(self) -> tuple[list[PackInfo], list[PackInfo], list[PackInfo]]:
        """Packs to delete, to repack and to keep as they are."""
        s, opts = self.stats, self.opts
        delete: list[PackInfo] = []
        keep: list[PackInfo] = []
        candidates: list[PackInfo] = []
        for p in self.packs:
            s.blobs += p.count
            s.used_blobs += p.used_count
            s.used_bytes += p.used_bytes
            s.unused_blobs += p.count - p.used_count
            s.unused_bytes += p.unused_bytes
            if p.size < 0:
                s.missing_packs += 1
                delete.append(p)
                continue
            s.size += p.size
            if p.used_count == 0:
                delete.append(p)
            elif p.used_count == p.count:
                keep.append(p)
            else:
                candidates.append(p)
        s.delete_packs = sum(1 for p in delete if p.size >= 0)
        s.delete_bytes = sum(p.size for p in delete if p.size >= 0)

        # Trees first (small, read by every prune and restore), then the emptiest data packs: the
        # most space freed per byte rewritten. A data pack is repacked while the repository is over
        # --max-unused, or when its own unused share reaches --repack-threshold (then rewriting it
        # is cheap per byte freed, and what stays behind is spread thin over packs near full).
        # `--max-unused unlimited` repacks no data pack at all: the way to prune without writing data.
        candidates.sort(key=lambda p: (p.type != TREE, -p.unused_share, p.id))
        unused_after = sum(p.unused_bytes for p in candidates)
        limit = opts.max_unused.limit(s.used_bytes)
        threshold = opts.repack_threshold
        if threshold is None or limit == float("inf"):
            threshold = 101.0  # no pack's share reaches it
        repack: list[PackInfo] = []
        for p in candidates:
            if opts.max_repack_size is not None and s.repack_bytes + p.size > opts.max_repack_size:
                keep.append(p)
                continue
            if p.type == TREE:
                p.reason = "tree"
            elif unused_after > limit:
                p.reason = "max-unused"
            elif 100 * p.unused_share >= threshold:
                p.reason = "threshold"
            else:
                keep.append(p)
                continue
            repack.append(p)
            s.repack_packs += 1
            s.repack_bytes += p.size
            s.repack_used_bytes += p.used_bytes
            unused_after -= p.unused_bytes
        s.unused_after = unused_after
        s.size_after = sum(p.size for p in keep) + s.repack_used_bytes
        return delete, repack, keep


def _fullness(p: PackInfo) -> tuple[float, bytes]:
    return (p.used_bytes / max(1, p.blob_bytes), p.id)


class _Missing(Exception):
    """A snapshot's tree or blob cannot be found or read (internal, becomes PruneRefused)."""


def _bounded_map(fn: Callable[[T], R], items: Sequence[T], width: int) -> Iterator[tuple[T, R]]:
    """Like pool.map, but at most `width` results wait in memory (an index file can be large)."""
    with ThreadPoolExecutor(width, thread_name_prefix="bfs-prune") as pool:
        pending: deque[tuple[T, Future[R]]] = deque()
        for x in items:
            pending.append((x, pool.submit(fn, x)))
            if len(pending) >= width:
                y, fut = pending.popleft()
                yield y, fut.result()
        while pending:
            y, fut = pending.popleft()
            yield y, fut.result()
