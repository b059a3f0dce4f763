"""The in-memory union of all index files: blob id -> where it lives.

Memory and start-up time matter (prune and mount load it whole, restic#3844, borg#3149), so the
bulk lives in flat byte arrays sorted by blob id - 32 bytes of id plus a 17-byte record per blob,
no Python object per blob - searched through a fan-out table. That form is also what the local
cache stores, so a cached index loads without parsing. Blobs added while the process runs go to a
small dict overlay.

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
REC = struct.Struct("<IBIII")  # pack number, type, offset, length, raw_length


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
    """Sorted ids (n*32), their records (n*17) and the fan-out table over them; never changed."""

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
        fanout = array.array("I", itertools.accumulate((counts.get(p, 0) for p in range(65536)), initial=0))
        return cls(bytes(ids), recs, fanout)

    def __len__(self) -> int:
        return len(self.ids) // ID_SIZE

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
    length, raw_length) for blobs not in `base`; it grows in place, under the writer lock."""

    base: _Base
    overlay: dict[bytes, tuple[int, int, int, int, int]]


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
    def from_table(
        cls, table: CompactTable, packs: Iterable[tuple[bytes, Iterable[PackEntry]]] = ()
    ) -> MasterIndex:
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
            if state.overlay:
                rows = [*state.base.rows(), *state.overlay.items()]
                self._state = _State(_sorted_base(rows), {})

    def add_pack(self, pack_id: bytes, entries: Iterable[PackEntry]) -> None:
        with self._lock:
            no = self._number(pack_id)
            state = self._state
            overlay, base_find = state.overlay, state.base.find
            for e in entries:
                if e.id not in overlay and base_find(e.id) < 0:
                    overlay[e.id] = (no, e.type, e.offset, e.length, e.raw_length)

    # ---------------------------------------------------------------- queries

    def _raw(self, blob_id: bytes) -> tuple[int, int, int, int, int] | None:
        state = self._state  # one read: base and overlay of the same moment
        rec = state.overlay.get(blob_id)
        if rec is not None:
            return rec
        i = state.base.find(blob_id)
        return None if i < 0 else state.base.rec(i)

    def __len__(self) -> int:
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

    def raw_length(self, blob_id: bytes) -> int | None:
        rec = self._raw(blob_id)
        return None if rec is None else rec[4]

    def pack_ids(self) -> set[bytes]:
        return set(self._pack_no)

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        state, packs = self._state, self._packs
        for bid, (no, btype, off, length, raw) in itertools.chain(state.base.rows(), list(state.overlay.items())):
            yield bid, BlobLocation(packs[no], btype, off, length, raw)


def _sorted_base(rows: list[tuple[bytes, tuple[int, int, int, int, int]]]) -> _Base:
    rows.sort(key=lambda r: r[0])
    ids: list[bytes] = []
    recs: list[bytes] = []
    last = b""
    for bid, rec in rows:
        if bid != last:  # a blob stored twice (concurrent backups): either copy is good
            ids.append(bid)
            recs.append(REC.pack(*rec))
            last = bid
    return _Base.of(b"".join(ids), b"".join(recs))
