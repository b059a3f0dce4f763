"""The in-memory union of all index files: blob id -> where it lives.

Memory and start-up time matter (prune and mount load it whole, restic#3844, borg#3149), so the
bulk lives in flat byte arrays sorted by blob id - 32 bytes of id plus a 17-byte record per blob,
no Python object per blob - searched through a fan-out table. That form is also what the local
cache stores, so a cached index loads without parsing. Blobs added while the process runs go to a
small dict overlay.

A blob stored in several packs (two concurrent backups, a chunk stored again after its first copy
was found damaged, or an index that claims a blob lives somewhere it does not) keeps every copy:
a reader that finds one damaged uses another (architecture.md 4). In the sorted arrays the copies are
adjacent rows of the same id, in the order they were loaded; copies added while the process runs
go to a small side table (`extra`). Neither costs a Python object per blob.

Readers (the mount's worker threads) take no lock. So everything a lookup reads is published as
one object in one attribute assignment: the sorted arrays, their fan-out table and the overlay
that goes with them (`_State`). Compaction builds a new state and swaps it in; it never changes
one a reader may hold. The overlay dict only grows (under the writer lock) until it is replaced.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import itertools
import struct
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from backupfs.format.pack import PackEntry

ID_SIZE = 32
FANOUT = 1 << 16  # one entry per value of an id's first two bytes
REC = struct.Struct("<IBIII")  # pack number, type, offset, length, raw_length
Rec = tuple[int, int, int, int, int]  # a record unpacked


@dataclasses.dataclass(frozen=True, slots=True)
class BlobLocation:
    pack_id: bytes
    type: int
    offset: int
    length: int
    raw_length: int


class _IdView(Sequence[bytes]):
    """The sorted id array seen as a sequence of 32-byte ids, for `bisect`."""

    __slots__ = ("_buf", "_n")

    def __init__(self, buf: bytes) -> None:
        self._buf = buf
        self._n = len(buf) // ID_SIZE

    def __len__(self) -> int:
        return self._n

    @property
    def buffer(self) -> bytes:
        return self._buf

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            raise TypeError("slicing is not supported")
        return bytes(self._buf[i * ID_SIZE : (i + 1) * ID_SIZE])


@dataclasses.dataclass(frozen=True, slots=True)
class CompactTable:
    """Sorted, immutable arrays: `ids` (n*32), `recs` (n*17), `packs` (m*32)."""

    ids: bytes | memoryview
    recs: bytes | memoryview
    packs: bytes | memoryview

    @property
    def count(self) -> int:
        return len(self.ids) // ID_SIZE

    def pack_list(self) -> list[bytes]:
        return [bytes(self.packs[i : i + ID_SIZE]) for i in range(0, len(self.packs), ID_SIZE)]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _Base:
    """Sorted ids (n*32), their records (n*17) and the fan-out table over them; never changed.
    An id stored in several packs has one row per copy, adjacent."""

    ids: bytes
    recs: bytes | memoryview
    fanout: array.array[int]

    @classmethod
    def of(cls, ids: bytes | memoryview, recs: bytes | memoryview) -> _Base:
        """Builds the fan-out table: for each 2-byte id prefix, where its run starts."""
        n = len(ids) // ID_SIZE
        pairs = bytearray(2 * n)  # little-endian uint16 of each id's first two bytes
        pairs[0::2] = ids[1::ID_SIZE]
        pairs[1::2] = ids[0::ID_SIZE]
        prefixes = array.array("H", bytes(pairs))
        if sys.byteorder == "big":
            prefixes.byteswap()
        # fanout[p] = how many ids sort before prefix p: a running sum of the prefix counts
        # (Counter counts in C: loading a 106k-blob index from the cache took 73 ms with 65,536
        # bisections, 33 ms so; it is on the path of every command, and of a mount's first ls).
        counts = collections.Counter(prefixes)
        fanout = array.array("I", itertools.accumulate((counts.get(p, 0) for p in range(FANOUT)), initial=0))
        return cls(bytes(ids), recs, fanout)

    def __len__(self) -> int:
        return len(self.ids) // ID_SIZE

    def run(self, i: int) -> range:
        """The rows of the id at row `i` (its first row): one per copy."""
        ids, end = self.ids, i + 1
        blob_id = ids[i * ID_SIZE : (i + 1) * ID_SIZE]
        while end < len(self) and ids[end * ID_SIZE : (end + 1) * ID_SIZE] == blob_id:
            end += 1
        return range(i, end)

    def find(self, blob_id: bytes) -> int:
        """A C-speed substring search inside the id's fan-out run (a few dozen ids)."""
        prefix = (blob_id[0] << 8) | blob_id[1]
        start = self.fanout[prefix] * ID_SIZE
        end = self.fanout[prefix + 1] * ID_SIZE
        buf = self.ids
        while True:
            pos = buf.find(blob_id, start, end)
            if pos < start:
                return -1
            if pos % ID_SIZE == 0:
                return pos // ID_SIZE
            start = pos + 1

    def rec(self, i: int) -> tuple[int, int, int, int, int]:
        return REC.unpack_from(self.recs, i * REC.size)

    def rows(self) -> Iterator[tuple[bytes, tuple[int, int, int, int, int]]]:
        ids = _IdView(self.ids)
        for i in range(len(ids)):
            yield ids[i], self.rec(i)


_EMPTY_BASE = _Base.of(b"", b"")


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _State:
    """What a reader sees, published whole. `overlay`: blob id -> (pack number, type, offset,
    length, raw_length) for blobs not in `base`; `extra`: blob id -> further copies of a blob in
    `base` or `overlay`, added while the process runs (a value is replaced, never changed, so a
    reader holding one sees a whole tuple). Both grow in place, under the writer lock."""

    base: _Base
    overlay: dict[bytes, Rec]
    extra: dict[bytes, tuple[Rec, ...]] = dataclasses.field(default_factory=dict)


class MasterIndex:
    """Thread-safe: writers (adds, compaction) serialise on a lock; readers take none and see
    one consistent `_State` per lookup."""

    def __init__(self) -> None:
        # pack number -> pack id; append-only, and a number is in it before any entry names it
        self._packs: list[bytes] = []
        self._pack_no: dict[bytes, int] = {}
        self._state = _State(_EMPTY_BASE, {})
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- building

    @classmethod
    def from_table(cls, table: CompactTable, packs: Iterable[tuple[bytes, Iterable[PackEntry]]] = ()) -> MasterIndex:
        """The cached table, with `packs` (index files the cache does not cover) in the overlay."""
        idx = cls()
        idx._packs = table.pack_list()
        idx._pack_no = {p: i for i, p in enumerate(idx._packs)}
        idx._state = _State(_Base.of(table.ids, table.recs), {})
        for pack_id, entries in packs:
            idx.add_pack(pack_id, entries)
        return idx

    @classmethod
    def build(cls, packs: Iterable[tuple[bytes, Iterable[PackEntry]]]) -> MasterIndex:
        """One sort over every entry: far cheaper than inserting blob by blob."""
        idx = cls()
        rows: list[tuple[bytes, tuple[int, int, int, int, int]]] = []
        for pack_id, entries in packs:
            no = idx._number(pack_id)
            rows.extend((e.id, (no, e.type, e.offset, e.length, e.raw_length)) for e in entries)
        idx._state = _State(_sorted_base(rows), {})
        return idx

    def _number(self, pack_id: bytes) -> int:
        no = self._pack_no.get(pack_id)
        if no is None:
            no = self._pack_no[pack_id] = len(self._packs)
            self._packs.append(pack_id)
        return no

    def to_table(self) -> CompactTable:
        """Everything (base and overlay) as sorted arrays: what the cache stores."""
        self.compact()
        base = self._state.base
        return CompactTable(base.ids, base.recs, b"".join(self._packs))

    def compact(self) -> None:
        """Moves the overlay into the sorted base: a new state, published in one assignment.

        Holds the writer lock throughout, so no add is lost between reading the overlay and
        replacing it; readers are never blocked.
        """
        with self._lock:
            state = self._state
            if state.overlay or state.extra:
                rows = [*state.base.rows(), *state.overlay.items()]
                rows += [(bid, rec) for bid, recs in state.extra.items() for rec in recs]
                self._state = _State(_sorted_base(rows), {})

    def add_pack(self, pack_id: bytes, entries: Iterable[PackEntry]) -> None:
        """Adds a pack's blobs; a blob already known in another pack gains this copy. A pack
        added twice (an index file read again, a pack both indexed and found by its header)
        adds nothing the second time."""
        with self._lock:
            no = self._number(pack_id)
            state = self._state
            overlay, extra = state.overlay, state.extra
            for e in entries:
                rec = (no, e.type, e.offset, e.length, e.raw_length)
                known = self._recs(state, e.id)
                if not known:
                    overlay[e.id] = rec
                elif all(r[0] != no for r in known):
                    extra[e.id] = (*extra.get(e.id, ()), rec)

    # ---------------------------------------------------------------- queries

    def _raw(self, blob_id: bytes) -> Rec | None:
        state = self._state  # one read: base and overlay of the same moment
        rec = state.overlay.get(blob_id)
        if rec is not None:
            return rec
        i = state.base.find(blob_id)
        return None if i < 0 else state.base.rec(i)

    @staticmethod
    def _recs(state: _State, blob_id: bytes) -> list[Rec]:
        """Every copy of a blob in one state: base rows, the overlay, then the extra copies."""
        out: list[Rec] = []
        i = state.base.find(blob_id)
        if i >= 0:
            out += [state.base.rec(j) for j in state.base.run(i)]
        rec = state.overlay.get(blob_id)
        if rec is not None:
            out.append(rec)
        out += state.extra.get(blob_id, ())
        return out

    def __len__(self) -> int:
        """Blobs (a blob with several copies in the sorted arrays counts once per copy there)."""
        state = self._state
        return len(state.base) + len(state.overlay)

    def __contains__(self, blob_id: object) -> bool:
        if not isinstance(blob_id, bytes):
            return False
        state = self._state
        return blob_id in state.overlay or state.base.find(blob_id) >= 0

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        rec = self._raw(blob_id)
        if rec is None:
            return None
        no, btype, off, length, raw = rec
        return BlobLocation(self._packs[no], btype, off, length, raw)

    def locations(self, blob_id: bytes) -> list[BlobLocation]:
        """Every copy of a blob, the first one `lookup` gives first; empty if none."""
        packs = self._packs
        return [BlobLocation(packs[no], t, off, n, raw) for no, t, off, n, raw in self._recs(self._state, blob_id)]

    def raw_length(self, blob_id: bytes) -> int | None:
        rec = self._raw(blob_id)
        return None if rec is None else rec[4]

    def pack_ids(self) -> set[bytes]:
        return set(self._pack_no)

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        """Every copy of every blob."""
        state, packs = self._state, self._packs
        extra = [(bid, rec) for bid, recs in list(state.extra.items()) for rec in recs]
        for bid, (no, btype, off, length, raw) in itertools.chain(
            state.base.rows(), list(state.overlay.items()), extra
        ):
            yield bid, BlobLocation(packs[no], btype, off, length, raw)


def _sorted_base(rows: list[tuple[bytes, Rec]]) -> _Base:
    """Rows sorted by id (stable: a blob's copies keep their order, the first loaded first); a
    copy listed twice in the same pack is kept once."""
    rows.sort(key=lambda r: r[0])
    ids: list[bytes] = []
    recs: list[bytes] = []
    last = b""
    packs_of_last: set[int] = set()
    for bid, rec in rows:
        if bid != last:
            last, packs_of_last = bid, set()
        elif rec[0] in packs_of_last:
            continue
        packs_of_last.add(rec[0])
        ids.append(bid)
        recs.append(REC.pack(*rec))
    return _Base.of(b"".join(ids), b"".join(recs))
