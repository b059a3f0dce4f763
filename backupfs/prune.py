"""Prune: find what the remaining snapshots use, then delete and repack the rest (design.md "Prune").

Two steps, kept apart so that `--dry-run` is "plan and print" and the plan can be tested on its own:

* `plan_prune()` only reads. It loads every index file into one compact table (45 bytes per
  index entry plus a 4-byte open-addressing hash slot array; no Python object per blob), walks
  every snapshot's trees once, marks the blobs in use, and decides which packs to delete (nothing
  in use), which to repack (much unused) and which unindexed packs are left-overs of killed backups.
* `PrunePlan.execute()` changes the repository in an order where a kill at any instant leaves a
  consistent repository: new packs, then an index that supersedes every old index file and lists
  every kept pack, then old index files are deleted, then packs. Packs that hold nothing in use are
  deleted in a first round before anything is repacked, so a full disk gets space back first.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import re
import struct
import threading
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

import msgpack

from backupfs.backends.base import FileType
from backupfs.errors import BackendError, BackupfsError, IntegrityError, NotFound, UsageError
from backupfs.format import index as index_fmt
from backupfs.format.pack import DATA, TREE, PackEntry, read_ranges
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, Node, decode_tree
from backupfs.repository.masterindex import BlobLocation
from backupfs.repository.packer import Packer
from backupfs.repository.repo import Repository

__all__ = [
    "CRASH_ENV",
    "PHASES",
    "REPACK_REASONS",
    "MaxUnused",
    "PackInfo",
    "PruneOptions",
    "PrunePlan",
    "PruneRefused",
    "PruneStats",
    "decode_index_into",
    "encode_index",
    "parse_max_unused",
    "parse_repack_threshold",
    "parse_size",
    "plan_prune",
]

# Test-only: `BACKUPFS_TEST_CRASH_AT=<phase>` makes the process exit at once (os._exit, no cleanup)
# when execution reaches that phase boundary; the crash tests kill prune at every one of them.
CRASH_ENV = "BACKUPFS_TEST_CRASH_AT"
CRASH_EXIT = 99
PHASES = (
    "planned",
    "garbage-deleted",
    "delete:index-partial",
    "delete:index-written",
    "delete:old-index-deleted",
    "delete:pack-deleted",
    "delete:packs-deleted",
    "repack:pack-written",
    "repack:packs-written",
    "repack:index-partial",
    "repack:index-written",
    "repack:old-index-deleted",
    "repack:pack-deleted",
    "repack:packs-deleted",
    "done",
)

T = TypeVar("T")
R = TypeVar("R")

_READ_GAP = 1 << 20  # unused bytes a repack reads through rather than making another request
_REC = struct.Struct("<32sBIII")  # blob id, type, offset, length, raw length
_RS = _REC.size
_META = struct.Struct("<32xBIII")  # a record without its id
_FIRST8 = struct.Struct("<Q")
_FIB = 0x9E3779B97F4A7C15  # 2**64 / golden ratio
_M64 = (1 << 64) - 1
_EMPTY_SLOT = 0
TREE_READERS = 4


class PruneRefused(IntegrityError):
    """Prune cannot see all data the snapshots need; deleting anything could destroy some of it."""


# ---------------------------------------------------------------- options


def parse_size(text: str) -> int:
    """`100M`, `1.5G`, `512k`, `1000` (bytes); binary units as restic (k=1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if m is None:
        raise UsageError(f"invalid size {text!r} (use e.g. 500M, 2G or a number of bytes)")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_"))


@dataclasses.dataclass(frozen=True, slots=True)
class MaxUnused:
    """How much unused space may remain: a share of the repository, a byte count, or no limit."""

    percent: float | None = 5.0
    bytes: int | None = None

    def limit(self, used: int) -> float:
        """The unused bytes tolerated next to `used` bytes in use."""
        if self.bytes is not None:
            return float(self.bytes)
        if self.percent is None or self.percent >= 100:
            return float("inf")
        # unused <= p% of (used + unused)  <=>  unused <= used * p / (100 - p)
        return used * self.percent / (100 - self.percent)

    def __str__(self) -> str:
        if self.bytes is not None:
            return f"{self.bytes} bytes"
        return "unlimited" if self.percent is None else f"{self.percent:g}%"


def parse_max_unused(text: str) -> MaxUnused:
    """`5%`, `100M` (absolute) or `unlimited`."""
    s = text.strip().lower()
    if s == "unlimited":
        return MaxUnused(None, None)
    if s.endswith("%"):
        try:
            pct = float(s[:-1])
        except ValueError:
            pct = -1.0
        if not 0 <= pct <= 100:
            raise UsageError(f"invalid --max-unused {text!r}: a percentage must be between 0% and 100%")
        return MaxUnused(pct, None)
    try:
        return MaxUnused(None, parse_size(text))
    except UsageError:
        raise UsageError(f"invalid --max-unused {text!r} (use e.g. 5%, 100M or unlimited)") from None


def parse_repack_threshold(text: str) -> float | None:
    """`10%` (or `10`): repack every data pack with at least that share unused; `off` for never."""
    s = text.strip().lower()
    if s in ("off", "none", "never"):
        return None
    try:
        pct = float(s.removesuffix("%"))
    except ValueError:
        pct = -1.0
    if not 0 <= pct <= 100:
        raise UsageError(f"invalid --repack-threshold {text!r} (use a percentage such as 10% or 'off')")
    return pct


@dataclasses.dataclass(frozen=True, slots=True)
class PruneOptions:
    max_unused: MaxUnused = MaxUnused()
    max_repack_size: int | None = None  # total size of the packs chosen for repacking
    # A data pack with at least this percentage of its blob bytes unused is repacked even when the
    # repository as a whole is within max_unused: rewriting it costs at most (2 - t) / t bytes of
    # I/O per byte freed (39 at 5%). None: only max_unused decides (restic's rule).
    repack_threshold: float | None = 5.0
    # Index files prune writes hold at most this many entries, so reading one never needs much memory.
    index_max_entries: int = 50_000


# ---------------------------------------------------------------- the compact blob table


class _BlobTable:
    """Every index entry as a 45-byte record in one bytearray, with an open-addressing hash
    (array of uint32 record numbers + 1) over the ids: about 55 bytes per blob and no Python
    object per blob, where a dict or set of ids would cost well over 100 (restic#3844).

    Slots come from the first 8 bytes of the id (ids are keyed hashes, so uniform), spread by a
    Fibonacci multiplication so that even ids that are not random would not pile up.
    """

    def __init__(self) -> None:
        self.recs = bytearray()
        self._slots: array[int] = array("I")
        self._shift = 64
        # record number of a blob's first copy -> its other copies (rare: concurrent backups)
        self.dups: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.recs) // _RS

    def build_hash(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Hashes the records of the given (start, count) ranges: the live packs."""
        ranges = list(ranges)
        n = sum(c for _s, c in ranges)
        bits = 3
        while (1 << bits) < 2 * n:
            bits += 1
        size = 1 << bits
        slots = self._slots = array("I", bytes(4 * size))
        shift = self._shift = 64 - bits
        mask = size - 1
        recs, dups, first8 = self.recs, self.dups, _FIRST8.unpack_from
        for start, count in ranges:
            for g in range(start, start + count):
                o = g * _RS
                i = ((first8(recs, o)[0] * _FIB) & _M64) >> shift
                while True:
                    s = slots[i]
                    if s == _EMPTY_SLOT:
                        slots[i] = g + 1
                        break
                    so = (s - 1) * _RS
                    if recs[so : so + 32] == recs[o : o + 32]:
                        dups.setdefault(s - 1, []).append(g)
                        break
                    i = (i + 1) & mask

    def find(self, bid: bytes) -> int:
        """The record number of a blob's first copy, or -1."""
        slots, recs = self._slots, self.recs
        mask = len(slots) - 1
        i: int = ((_FIRST8.unpack_from(bid)[0] * _FIB) & _M64) >> self._shift
        while True:
            s = slots[i]
            if s == _EMPTY_SLOT:
                return -1
            o = (s - 1) * _RS
            if recs[o : o + 32] == bid:
                return s - 1
            i = (i + 1) & mask

    def entry(self, g: int) -> PackEntry:
        bid, btype, off, length, raw = _REC.unpack_from(self.recs, g * _RS)
        return PackEntry(btype, bid, off, length, raw)

    def lengths(self, start: int, count: int) -> list[int]:
        """The stored (envelope) lengths of records start..start+count."""
        view = memoryview(self.recs)[start * _RS : (start + count) * _RS]
        try:
            return [n for _t, _o, n, _r in _META.iter_unpack(view)]
        finally:
            view.release()

    def copies(self, g: int) -> list[int]:
        return [g, *self.dups.get(g, ())]


def decode_index_into(plain: bytes, table: _BlobTable) -> tuple[list[bytes], list[tuple[bytes, int, int]]]:
    """Reads an index file's plaintext (design.md 8) straight into the table's records.

    Returns (superseded file ids, [(pack id, first record, record count)]). The same checks as
    format.index.IndexFile.decode, but streamed one pack at a time and without a PackEntry per
    blob: a backup's index file can list a million small blobs, and this is prune's peak memory.
    """
    unpacker = msgpack.Unpacker(raw=False, use_list=False, max_buffer_size=max(len(plain), 1))
    unpacker.feed(plain)
    sup: object = ()
    packs: list[tuple[bytes, int, int]] = []
    seen_packs = False
    pack = _REC.pack
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key != "packs":
                value = unpacker.unpack()
                if key == "supersedes":
                    sup = value
                continue
            seen_packs = True
            for _ in range(unpacker.read_array_header()):
                item = unpacker.unpack()
                if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes)):
                    raise IntegrityError("index pack entry malformed")
                if len(item[0]) != 32 or not isinstance(item[1], tuple):
                    raise IntegrityError("index pack entry malformed")
                recs = []
                for btype, bid, off, length, raw in item[1]:
                    if btype not in (DATA, TREE) or not isinstance(bid, bytes) or len(bid) != 32:
                        raise IntegrityError("pack entry malformed")
                    recs.append(pack(bid, btype, off, length, raw))  # struct rejects negatives and non-ints
                start = len(table)
                table.recs += b"".join(recs)
                packs.append((item[0], start, len(recs)))
        if unpacker.tell() != len(plain):
            raise IntegrityError("index file has trailing data")
    except (ValueError, TypeError, struct.error, msgpack.OutOfData, msgpack.FormatError, msgpack.StackError) as exc:
        raise IntegrityError("index file malformed") from exc
    if not seen_packs or not isinstance(sup, tuple) or not all(isinstance(x, bytes) and len(x) == 32 for x in sup):
        raise IntegrityError("index file malformed")
    return list(sup), packs


def encode_index(packs: Sequence[tuple[bytes, bytes]], supersedes: list[bytes]) -> bytes:
    """The plaintext of an index file listing `packs` as (pack id, records); byte for byte what
    format.index.IndexFile.encode makes, streamed so no object per blob is built."""
    packer = msgpack.Packer(use_bin_type=True)
    out = bytearray(packer.pack_map_header(2))
    out += packer.pack("supersedes") + packer.pack(supersedes)
    out += packer.pack("packs") + packer.pack_array_header(len(packs))
    for pid, recs in packs:
        out += packer.pack_array_header(2) + packer.pack(pid) + packer.pack_array_header(len(recs) // _RS)
        for bid, btype, off, length, raw in _REC.iter_unpack(recs):
            out += packer.pack((btype, bid, off, length, raw))
    return bytes(out)


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


# ---------------------------------------------------------------- the plan


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


Hook = Callable[[str], None]
Log = Callable[[str], None]


def _env_hook(phase: str) -> None:
    if os.environ.get(CRASH_ENV) == phase:
        os._exit(CRASH_EXIT)


def plan_prune(
    repo: Repository,
    opts: PruneOptions = PruneOptions(),
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
        self.table = _BlobTable()
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
                supersedes, per_file[name] = decode_index_into(plain, self.table)
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


# ---------------------------------------------------------------- execution


class PrunePlan:
    """What prune will do; `execute()` does it. Holds the blob table the planner built."""

    def __init__(
        self,
        repo: Repository,
        opts: PruneOptions,
        table: _BlobTable,
        *,
        keep: list[PackInfo],
        delete: list[PackInfo],
        repack: list[PackInfo],
        used: bytearray,
        unindexed: list[str],
        index_files: list[str],
        obsolete_index_files: list[str],
        stats: PruneStats,
    ) -> None:
        self.repo = repo
        self.opts = opts
        self._table = table
        self._used = used
        self.keep = keep
        self.delete = delete
        self.repack = repack
        self.unindexed = unindexed
        self.index_files = index_files
        self.obsolete_index_files = obsolete_index_files
        self.stats = stats
        self._current_index = list(index_files) + list(obsolete_index_files)

    @property
    def nothing_to_do(self) -> bool:
        return not (self.delete or self.repack or self.unindexed or self.obsolete_index_files)

    def execute(self, *, log: Log = lambda _m: None, hook: Hook = _env_hook) -> PruneStats:
        """Carries out the plan; safe to kill at any point (design.md "Prune").

        A storage error (a full disk) stops it with the repository consistent: new packs not yet
        in force are removed again, and running prune later finishes the job.
        """
        hook("planned")
        try:
            if self.unindexed:
                # In no index, so no snapshot uses them, and with the exclusive lock no backup runs.
                log(f"deleting {len(self.unindexed)} unindexed packs")
                self._remove(FileType.DATA, self.unindexed, lambda _p: None)
            # Temporary files of writers killed mid-save; prune holds the exclusive lock, and the
            # age limit keeps even a stalled concurrent writer's file safe.
            if self.repo.backend.info().sweeps_temporaries:
                n = self.repo.backend.remove_stale_temporaries()
                if n:
                    log(f"removed {n} abandoned temporary files")
            hook("garbage-deleted")
            if self.delete:
                log(f"deleting {len(self.delete)} packs with nothing in use")
                self._commit("delete", self.keep + self.repack, [], [p.id.hex() for p in self.delete], log, hook)
            if self.repack:
                log(f"repacking {len(self.repack)} packs")
                new = self._repack(hook)
                hook("repack:packs-written")
                self._commit("repack", self.keep, new, [p.id.hex() for p in self.repack], log, hook)
            elif not self.delete and self.obsolete_index_files:
                self._remove(FileType.INDEX, self.obsolete_index_files, lambda _p: None)
        except BackupfsError as exc:
            raise type(exc)(
                f"prune stopped: {exc}. The repository is consistent and nothing in use was deleted; "
                "run prune again (after making space, if the storage is full)"
            ) from exc
        self.stats.executed = True
        hook("done")
        return self.stats

    def _commit(
        self,
        phase: str,
        keep: list[PackInfo],
        new: list[tuple[bytes, bytes]],
        remove: list[str],
        log: Log,
        hook: Hook,
    ) -> None:
        """One crash-safe step: index of `keep` + `new` superseding all, then old index, then packs."""
        old = self._current_index
        log("writing new index")
        try:
            written = self._write_index(keep, new, old, lambda: hook(f"{phase}:index-partial"))
        except BackupfsError:
            self._discard_packs([pid for pid, _r in new])  # the old index is still in force
            raise
        self._current_index = written
        hook(f"{phase}:index-written")
        self._remove(FileType.INDEX, [n for n in old if n not in written], lambda _p: None)
        hook(f"{phase}:old-index-deleted")
        log(f"deleting {len(remove)} packs")
        self._remove(FileType.DATA, remove, lambda _p: hook(f"{phase}:pack-deleted"))
        hook(f"{phase}:packs-deleted")

    def _write_index(
        self, keep: list[PackInfo], new: list[tuple[bytes, bytes]], supersedes: list[str], partial: Callable[[], None]
    ) -> list[str]:
        """Index files of at most `index_max_entries` entries; only the last supersedes the old
        ones, so until it exists the old files stay in force (the earlier ones merely repeat them)."""
        table = self._table

        def packs() -> Iterator[tuple[bytes, bytes]]:
            for p in keep:
                yield p.id, bytes(table.recs[p.start * _RS : (p.start + p.count) * _RS])
            yield from new

        def save(chunk: list[tuple[bytes, bytes]], sup: list[bytes]) -> str:
            return self.repo.save_file(FileType.INDEX, encode_index(chunk, sup), index_fmt.AAD)

        written: list[str] = []
        try:
            chunk: list[tuple[bytes, bytes]] = []
            entries = 0
            for pid, recs in packs():
                n = len(recs) // _RS
                if chunk and entries + n > self.opts.index_max_entries:
                    written.append(save(chunk, []))
                    if len(written) == 1:
                        partial()
                    chunk, entries = [], 0
                chunk.append((pid, recs))
                entries += n
            written.append(save(chunk, [bytes.fromhex(n) for n in supersedes]))
        except BackupfsError:
            for name in written:  # they only repeat what the old files say
                _remove_quietly(self.repo, FileType.INDEX, name)
            raise
        self.stats.index_files_written += len(written)
        return written

    def _remove(self, ftype: FileType, names: list[str], after_first: Callable[[str], None]) -> None:
        """Deletes files (several at a time: remote backends have latency); gone already is fine."""
        if not names:
            return
        self.repo.check_lock()  # each deleting phase: with the lock lost, a backup may need these

        def rm(name: str) -> None:
            try:
                self.repo.backend.remove(ftype, name)
            except NotFound:
                pass

        rm(names[0])
        after_first(names[0])
        if len(names) > 1:
            with ThreadPoolExecutor(8, thread_name_prefix="bfs-prune-rm") as pool:
                for _ in pool.map(rm, names[1:]):
                    pass

    def _discard_packs(self, pack_ids: list[bytes]) -> None:
        """Best effort: new packs in no index in force are garbage; give their space back now."""
        for pid in pack_ids:
            _remove_quietly(self.repo, FileType.DATA, pid.hex())

    def _repack(self, hook: Hook) -> list[tuple[bytes, bytes]]:
        """Copies the live blobs of the packs to repack into new packs; returns (pack id, records).

        Envelopes are copied unchanged (they are bound to blob id and type, not to a position),
        after checking that each decrypts and hashes to its id, so prune never spreads damage.
        """
        repo, table, used = self.repo, self._table, self._used
        new: list[tuple[bytes, bytes]] = []
        lock = threading.Lock()

        def upload(name: str, data: bytes, entries: list[PackEntry]) -> None:
            repo.backend.save(FileType.DATA, name, data)
            recs = b"".join(_REC.pack(e.id, e.type, e.offset, e.length, e.raw_length) for e in entries)
            with lock:
                new.append((bytes.fromhex(name), recs))
                first = len(new) == 1
                self.stats.packs_written += 1
                self.stats.bytes_written += len(data)
            if first:
                hook("repack:pack-written")

        packer = Packer(repo.cipher, repo.config.pack_size, upload, uploaders=2, max_in_flight=2)
        try:
            for p in self.repack:
                name = p.id.hex()
                live = sorted(
                    (table.entry(g) for g in range(p.start, p.start + p.count) if used[g]), key=lambda e: e.offset
                )
                # one request per pack, reading through dead blobs (measured: 914 GETs to repack
                # 21 packs, one per run of live blobs; restic ~90)
                for group in read_ranges(live, _span, _READ_GAP):
                    start = group[0].offset
                    end = group[-1].offset + group[-1].length
                    data = repo.backend.load(FileType.DATA, name, start, end - start)
                    for e in group:
                        envelope = data[e.offset - start : e.offset - start + e.length]
                        plain = repo.open_blob(e.type, e.id, envelope, name)
                        if len(plain) != e.raw_length or repo.blob_id(plain) != e.id:
                            raise IntegrityError(f"pack {name}: blob {e.id.hex()[:16]} does not hash to its id")
                        packer.add(e.type, e.id, envelope, e.raw_length)
            packer.flush()
        except BackupfsError:
            packer.close()
            with lock:
                written = [pid for pid, _r in new]
            self._discard_packs(written)
            raise
        finally:
            packer.close()
        return new


def _remove_quietly(repo: Repository, ftype: FileType, name: str) -> None:
    try:
        repo.backend.remove(ftype, name)
    except BackendError:
        pass


def _span(e: PackEntry) -> tuple[int, int]:
    return e.offset, e.length
