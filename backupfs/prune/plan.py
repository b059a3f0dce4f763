"""Plan a prune: find what the remaining snapshots use, and decide what to delete and repack.

`plan_prune()` only reads (so `--dry-run` is "plan and print", and the plan can be tested on its
own). It loads every index file into one compact table (`table.BlobTable`), walks every
snapshot's trees once, marks the blobs in use, and decides which packs to delete (nothing in
use), which to repack (much unused) and which unindexed packs are left-overs of killed backups.
`execute.execute()` carries the plan out.

It trusts no index file about what a pack holds before deleting it (architecture.md 5, "Whatever the
index says"): a pack that no live index lists is read (its authenticated header) and re-indexed
when it holds a blob in use; of a blob in use stored several times, the copy kept is read and
checked first; and the header of every listed pack to be deleted or repacked must not hold a blob
in use that the index places elsewhere.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from backupfs.backends.base import FileType
from backupfs.errors import BackupfsError, IntegrityError, NotFound
from backupfs.format import index as index_fmt
from backupfs.format.pack import TREE, PackEntry, read_ranges
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, Node, decode_tree
from backupfs.ops.walk import Kind, Step, TreeCycle, shown, walk
from backupfs.prune.locked import Held, locked_dates
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
VERIFY_READ_GAP = 1 << 20  # as repacking: on S3 a request costs about as much as a megabyte

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
    unlisted: bool = False  # in no live index: its entries come from its own header

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
    reindexed_packs: int = 0  # in no live index, but holding blobs in use: listed again
    verified_copies: int = 0  # copies of blobs stored several times, read to choose a good one
    damaged_copies: int = 0  # ... of which failed
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
    held: Held = dataclasses.field(default_factory=Held)  # left for later: Object Lock (locked.py)

    @property
    def reindexed(self) -> list[PackInfo]:
        """Packs no live index lists that hold blobs in use: the next index lists them again."""
        return [p for p in self.keep + self.repack if p.unlisted]

    @property
    def nothing_to_do(self) -> bool:
        return not (self.delete or self.repack or self.unindexed or self.obsolete_index_files or self.reindexed)


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
        present = self.repo.pack_files()
        indexed = set()
        for p in self.packs:
            h = p.id.hex()
            indexed.add(h)
            p.size = present.get(h, -1)
        unindexed = self._add_unlisted(sorted((n, s) for n, s in present.items() if n not in indexed))
        self._build()
        self.log("loading snapshots")
        snapshots = self._load_snapshots(ignore)
        self.stats.snapshots = len(snapshots)
        self.log(f"finding data in use by {len(snapshots)} snapshots")
        self._mark(snapshots)
        self._count()
        self._dedupe()
        self._count()
        for p in self.packs:
            if p.unlisted and p.used_count == 0:
                unindexed.append((p.id.hex(), p.size))  # nothing in use: garbage, as before
        self.packs = [p for p in self.packs if not (p.unlisted and p.used_count == 0)]
        delete, repack, keep = self._choose()
        held = self._hold_locked(delete, repack, keep, unindexed)
        self._check_headers(delete + repack)
        s = self.stats
        s.index_files = len(index_names)
        s.obsolete_index_files = len(obsolete)
        s.unindexed_packs = len(unindexed)
        s.unindexed_bytes = sum(size for _n, size in unindexed)
        s.reindexed_packs = sum(1 for p in keep + repack if p.unlisted)
        return PrunePlan(
            self.repo,
            self.opts,
            self.table,
            keep=keep,
            delete=delete,
            repack=repack,
            used=self.used,
            unindexed=sorted(n for n, _s in unindexed),
            index_files=index_names,
            obsolete_index_files=obsolete,
            stats=s,
            held=held,
        )

    # ---------------------------------------------------------------- index

    def _load_index(self) -> tuple[list[str], list[str]]:
        """Returns (live index files, superseded ones); fills the table and the pack list."""
        names = sorted(self.repo.file_names(FileType.INDEX))
        superseded: set[bytes] = set()
        per_file: dict[str, list[tuple[bytes, int, int]]] = {}

        def load(name: str) -> bytes:
            return self.repo.load_file(FileType.INDEX, name, index_fmt.AAD)

        try:
            for name, plain in _bounded_map(load, names, 4):
                try:
                    supersedes, per_file[name] = self.table.add_index_file(plain)
                except IntegrityError as exc:
                    raise IntegrityError(f"index/{name}: {exc}") from exc
                superseded.update(supersedes)
        except IntegrityError as exc:
            # From a partial index prune would take the packs of the damaged file for garbage.
            raise PruneRefused(
                f"refusing to prune: index file {str(exc).removeprefix('index/')[:8]} is damaged ({exc}); "
                "nothing was deleted. Run `backupfs repair index` to rebuild the index from the packs, "
                "then prune again"
            ) from exc
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
        self.stats.packs = len(self.packs)
        return live, obsolete

    def _add_unlisted(self, unlisted: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Reads the header of every pack no live index lists and adds its blobs to the table,
        so that marking sees them: a forged index that supersedes the real ones, or index files
        deleted by hand, must not make prune take the packs the snapshots use for garbage.
        Returns the packs whose header cannot be read (nothing can use them: garbage)."""
        if unlisted:
            self.log(f"reading the headers of {len(unlisted)} packs that no index lists")
        garbage: list[tuple[str, int]] = []
        for name, size, entries in self.repo.read_headers(unlisted):
            if isinstance(entries, IntegrityError) or not entries:
                garbage.append((name, size))
                continue
            start, count = self.table.add_pack(entries)
            self.packs.append(PackInfo(bytes.fromhex(name), start, count, entries[0].type, size, unlisted=True))
        return garbage

    def _build(self) -> None:
        self.packs.sort(key=lambda p: p.start)
        self._starts = [p.start for p in self.packs]
        self.table.build_hash((p.start, p.count) for p in self.packs)
        self.used = bytearray(len(self.table))

    def _pack_of(self, g: int) -> PackInfo:
        return self.packs[bisect.bisect_right(self._starts, g) - 1]

    # ---------------------------------------------------------------- snapshots and trees

    def _load_snapshots(self, ignore: frozenset[str]) -> list[tuple[str, Snapshot]]:
        out = []
        for name in sorted(self.repo.file_names(FileType.SNAPSHOT)):
            if name in ignore:
                continue
            try:
                out.append((name, self.repo.load_snapshot(name)))
            except BackupfsError as exc:
                raise PruneRefused(
                    f"refusing to prune: snapshot {name[:8]} cannot be read ({exc}); nothing was deleted. "
                    f"The file itself is damaged, so nothing can repair it: `backupfs forget {name[:8]}` "
                    "removes it (no other snapshot is affected)"
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
                + ". Run `backupfs check`: it names the command that fixes each problem (`backupfs repair snapshots` "
                "rewrites a snapshot without what is lost; a new backup stores again what its source still has)"
            )

    def _mark_tree(self, root: bytes, pool: ThreadPoolExecutor) -> None:
        """Marks what one snapshot uses, through the one tree walk: a tree is marked in use when
        the walk claims it, so no walk (of this or a later snapshot) loads it again; a few
        listings of each folder are fetched ahead by the pool's threads."""
        table, used = self.table, self.used
        find = table.find

        def unreadable(folder: Step[list[Node]], exc: BackupfsError) -> None:
            if isinstance(exc, TreeCycle):
                raise _Missing(f"{shown(folder.path)}: {exc}") from exc
            tid = folder.node.subtree if folder.node is not None and folder.node.subtree is not None else root
            raise _Missing(f"tree {tid.hex()[:16]} of {shown(folder.path)} {exc}") from exc

        steps = walk(
            self._load_tree,
            root,
            listings=True,
            seen=_Marks(table, used),
            on_error=unreadable,
            readahead=TREE_READERS,
            pool=pool,
        )
        for step in steps:
            node = step.node
            if step.kind is Kind.LISTING:
                self.stats.trees += 1
            elif node is not None and node.type != DIR:
                for _off, bid in node.content or ():
                    b = find(bid)
                    if b < 0:
                        raise _Missing(f"{shown(step.path)}: data blob {bid.hex()[:16]} is not in the index")
                    used[b] = 1

    def _load_tree(self, tid: bytes) -> list[Node]:
        """Tries each indexed copy of the tree: one may sit in a pack that is gone. (Runs in
        the walk's reader threads.)"""
        g = self.table.find(tid)
        if g < 0:
            raise IntegrityError("is not in the index")
        error: Exception | None = None
        for c in self.table.copies(g):
            e = self.table.entry(c)
            pack = self._pack_of(c)
            try:
                raw = self.repo.load_blob_at(TREE, tid, BlobLocation(pack.id, TREE, e.offset, e.length, e.raw_length))
                return decode_tree(raw)
            except BackupfsError as exc:
                error = exc
        raise IntegrityError(f"cannot be read: {error}")

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
        """Of a blob in use stored several times, keeps one good copy: the one in the fullest pack
        that exists and whose copy reads back (authenticates and hashes to its id).

        Reading it first matters because an index can claim a copy that is not there: an
        append-only client holding the key can upload a pack of garbage and an index that lists
        every blob in it. Trusting the "fullest" copy unread would let the real packs go.
        """
        table, used = self.table, self.used
        pending: dict[int, list[int]] = {}  # first record -> candidates left, best first
        for first, others in table.dups.items():
            self.stats.duplicate_blobs += len(others)
            if not used[first]:
                continue
            candidates = [g for g in (first, *others) if self._pack_of(g).size >= 0]
            if not candidates:
                continue  # reported below as a used blob in a missing pack
            used[first] = 0
            pending[first] = sorted(candidates, key=lambda g: _fullness(self._pack_of(g)), reverse=True)
        if pending:
            self.log(f"reading {len(pending)} blobs stored more than once, to keep a good copy")
        while pending:
            bad = self._verify([c[0] for c in pending.values()])
            self.stats.verified_copies += len(pending)
            self.stats.damaged_copies += len(bad)
            for first, candidates in list(pending.items()):
                if candidates[0] not in bad:
                    used[candidates[0]] = 1
                    del pending[first]
                elif len(candidates) == 1:
                    # every copy is damaged: keep the first one in use (so no pack holding one is
                    # judged empty), as for a blob stored once; check --read-data names it
                    used[first] = 1
                    del pending[first]
                else:
                    candidates.pop(0)
        missing: list[str] = []
        for p in self.packs:
            if p.size < 0 and any(used[g] for g in range(p.start, p.start + p.count)):
                missing.append(p.id.hex())
        if missing:
            raise PruneRefused(
                f"refusing to prune, nothing was deleted: pack {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + " is missing but holds data that snapshots need. Run `backupfs check`: it names the "
                "snapshots affected and the commands that fix them"
            )

    def _verify(self, records: list[int]) -> set[int]:
        """The records whose blob does not read back from its pack (each pack's records are read
        with as few ranged requests as repacking uses). A storage failure raises: prune then
        stops before changing anything."""
        by_pack: dict[int, list[tuple[PackEntry, int]]] = {}
        for g in records:
            p = bisect.bisect_right(self._starts, g) - 1
            by_pack.setdefault(p, []).append((self.table.entry(g), g))
        repo = self.repo

        def check(item: tuple[int, list[tuple[PackEntry, int]]]) -> list[int]:
            p, entries = item
            name = self.packs[p].id.hex()
            entries.sort(key=lambda eg: eg[0].offset)
            failed: list[int] = []
            for group in read_ranges(entries, _span, VERIFY_READ_GAP):
                start = group[0][0].offset
                end = max(e.offset + e.length for e, _g in group)
                try:
                    data = repo.load_pack(name, start, end - start)
                except NotFound:
                    data = b""
                for e, g in group:
                    envelope = data[e.offset - start : e.offset - start + e.length]
                    try:
                        if len(envelope) != e.length:
                            raise IntegrityError("the blob lies beyond the end of its pack")
                        repo.open_verified(e.type, e.id, envelope, name, e.raw_length)
                    except IntegrityError:
                        failed.append(g)
            return failed

        bad: set[int] = set()
        with ThreadPoolExecutor(TREE_READERS, thread_name_prefix="bfs-prune-verify") as pool:
            for failed in pool.map(check, by_pack.items()):
                bad.update(failed)
        return bad

    def _check_headers(self, packs: list[PackInfo]) -> None:
        """Before a listed pack is deleted or repacked, its own header (one ranged read, kept
        locally) must not hold a blob in use that the index does not place in it: that index
        is damaged or forged, and deleting the pack could lose the only good copy. A header
        that cannot be read holds nothing a reader could find; the index entries decide."""
        listed = [p for p in packs if not p.unlisted and p.size >= 0]
        if not listed:
            return
        by_name = {p.id.hex(): p for p in listed}
        wrong: list[str] = []
        for name, _size, entries in self.repo.read_headers([(p.id.hex(), p.size) for p in listed]):
            if isinstance(entries, IntegrityError):
                continue
            p = by_name[name]
            indexed = {
                (e.type, e.id, e.offset, e.length) for e in map(self.table.entry, range(p.start, p.start + p.count))
            }
            for e in entries:
                if (e.type, e.id, e.offset, e.length) not in indexed and self._in_use(e.id):
                    wrong.append(name)
                    break
        if wrong:
            raise PruneRefused(
                f"refusing to prune, nothing was deleted: pack {wrong[0]}"
                + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "")
                + " holds data that snapshots need where the index does not say so (the index is damaged "
                "or forged). Run `backupfs repair index` to rebuild it from the packs' own headers, then prune again"
            )

    def _in_use(self, blob_id: bytes) -> bool:
        g = self.table.find(blob_id)
        return g >= 0 and any(self.used[c] for c in self.table.copies(g))

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


    # ---------------------------------------------------------------- Object Lock

    def _hold_locked(
        self, delete: list[PackInfo], repack: list[PackInfo], keep: list[PackInfo], unindexed: list[tuple[str, int]]
    ) -> Held:
        """On a repository under Object Lock (format.md 13) a pack whose retention has not passed
        is neither deleted nor repacked. One to repack stays listed in the index as it is; one with
        nothing in use leaves the index (a later prune deletes it as unindexed): its entries serve
        no reader, and if an attacker forged them, listing them again would keep the lie in force.
        An unindexed one stays where it is. So no index names a pack that is gone, and no needed
        pack is in no index."""
        held = Held()
        names = [p.id.hex() for p in (*delete, *repack) if p.size >= 0] + [n for n, _s in unindexed]
        locked = locked_dates(self.repo, FileType.DATA, names)
        if not locked:
            return held
        s = self.stats
        unlisted_bytes = 0  # held packs with nothing in use: still stored, in no index
        for kind, packs in (("unused", delete), ("repack", repack)):
            stay = [p for p in packs if p.size >= 0 and p.id.hex() in locked]
            packs[:] = [p for p in packs if not (p.size >= 0 and p.id.hex() in locked)]
            for p in stay:
                held.add(kind, p.size, locked[p.id.hex()])
                s.unused_after += p.unused_bytes
                if kind == "unused":
                    s.delete_packs -= 1
                    s.delete_bytes -= p.size
                    unlisted_bytes += p.size
                else:
                    s.repack_packs -= 1
                    s.repack_bytes -= p.size
                    s.repack_used_bytes -= p.used_bytes
                    p.reason = ""
                    keep.append(p)
        for name, size in unindexed:
            if name in locked:
                held.add("unindexed", size, locked[name])
        unindexed[:] = [u for u in unindexed if u[0] not in locked]
        s.size_after = sum(p.size for p in keep) + s.repack_used_bytes + unlisted_bytes
        return held


def _fullness(p: PackInfo) -> tuple[float, bytes]:
    return (p.used_bytes / max(1, p.blob_bytes), p.id)


def _span(item: tuple[PackEntry, int]) -> tuple[int, int]:
    return item[0].offset, item[0].length


class _Missing(Exception):
    """A snapshot's tree or blob cannot be found or read (internal, becomes PruneRefused)."""


class _Marks:
    """The walk's `seen`: the trees marked in use in the blob table."""

    def __init__(self, table: BlobTable, used: bytearray) -> None:
        self._find = table.find
        self._used = used

    def __contains__(self, tree_id: object, /) -> bool:
        assert isinstance(tree_id, bytes)
        g = self._find(tree_id)
        return g >= 0 and bool(self._used[g])

    def add(self, tree_id: bytes, /) -> None:
        g = self._find(tree_id)
        if g >= 0:  # one not indexed: its load fails and says so
            self._used[g] = 1


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
