"""The in-memory union of all index files: blob id -> where it lives.

Memory and start-up time matter (prune and mount load it whole, restic#3844, borg#3149), so the
bulk lives in three flat byte arrays sorted by blob id - 32 bytes of id plus a 17-byte record per
blob, no Python object per blob - searched by bisection. That form is also what the local cache
stores, so a cached index loads without parsing. Blobs added while the process runs go to a
small dict overlay.
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


class MasterIndex:
    """Thread-safe: one writer (adds go to the overlay under a lock) and many readers."""

    def __init__(self) -> None:
        self._packs: list[bytes] = []
        self._pack_no: dict[bytes, int] = {}
        self._base_ids = _IdView(b"")
        self._base_recs: bytes | memoryview = b""
        self._fanout = array.array("I", bytes(4 * 65537))
        # blob id -> (pack number, type, offset, length, raw_length), for blobs not in the base
        self._overlay: dict[bytes, tuple[int, int, int, int, int]] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- building

    @classmethod
    def from_table(cls, table: CompactTable) -> MasterIndex:
        idx = cls()
        idx._packs = table.pack_list()
        idx._pack_no = {p: i for i, p in enumerate(idx._packs)}
        idx._install_base(table.ids, table.recs)
        return idx

    @classmethod
    def build(cls, packs: Iterable[tuple[bytes, Iterable[PackEntry]]]) -> MasterIndex:
        """One sort over every entry: far cheaper than inserting blob by blob."""
        idx = cls()
        rows: list[tuple[bytes, tuple[int, int, int, int, int]]] = []
        for pack_id, entries in packs:
            no = idx._pack_no.get(pack_id)
            if no is None:
                no = idx._pack_no[pack_id] = len(idx._packs)
                idx._packs.append(pack_id)
            rows.extend((e.id, (no, e.type, e.offset, e.length, e.raw_length)) for e in entries)
        idx._set_base(rows)
        return idx

    def _set_base(self, rows: list[tuple[bytes, tuple[int, int, int, int, int]]]) -> None:
        rows.sort(key=lambda r: r[0])
        ids: list[bytes] = []
        recs: list[bytes] = []
        last = b""
        for bid, rec in rows:
            if bid != last:  # a blob stored twice (concurrent backups): either copy is good
                ids.append(bid)
                recs.append(REC.pack(*rec))
                last = bid
        with self._lock:
            self._install_base(b"".join(ids), b"".join(recs))
            self._overlay = {}

    def _install_base(self, ids: bytes | memoryview, recs: bytes | memoryview) -> None:
        """Also builds the fan-out table: for each 2-byte id prefix, where its run starts."""
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
        self._base_ids = _IdView(bytes(ids))
        self._base_recs = recs
        self._fanout = fanout

    def to_table(self) -> CompactTable:
        """Everything (base and overlay) as sorted arrays: what the cache stores."""
        self.compact()
        return CompactTable(self._base_ids.buffer, self._base_recs, b"".join(self._packs))

    def compact(self) -> None:
        """Moves the overlay into the sorted base."""
        if self._overlay:
            with self._lock:
                rows = list(self._iter_raw())
            self._set_base(rows)

    def add_pack(self, pack_id: bytes, entries: Iterable[PackEntry]) -> None:
        with self._lock:
            no = self._pack_no.get(pack_id)
            if no is None:
                no = self._pack_no[pack_id] = len(self._packs)
                self._packs.append(pack_id)
            overlay = self._overlay
            for e in entries:
                if e.id not in overlay and self._base_find(e.id) < 0:
                    overlay[e.id] = (no, e.type, e.offset, e.length, e.raw_length)

    # ---------------------------------------------------------------- queries

    def _base_find(self, blob_id: bytes) -> int:
        """A C-speed substring search inside the id's fan-out run (a few dozen ids)."""
        prefix = (blob_id[0] << 8) | blob_id[1]
        start = self._fanout[prefix] * ID_SIZE
        end = self._fanout[prefix + 1] * ID_SIZE
        buf = self._base_ids.buffer
        while True:
            pos = buf.find(blob_id, start, end)
            if pos < start:
                return -1
            if pos % ID_SIZE == 0:
                return pos // ID_SIZE
            start = pos + 1

    def _raw(self, blob_id: bytes) -> tuple[int, int, int, int, int] | None:
        rec = self._overlay.get(blob_id)
        if rec is not None:
            return rec
        i = self._base_find(blob_id)
        if i < 0:
            return None
        return REC.unpack_from(self._base_recs, i * REC.size)

    def __len__(self) -> int:
        return len(self._base_ids) + len(self._overlay)

    def __contains__(self, blob_id: object) -> bool:
        return isinstance(blob_id, bytes) and (blob_id in self._overlay or self._base_find(blob_id) >= 0)

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

    def _iter_raw(self) -> Iterator[tuple[bytes, tuple[int, int, int, int, int]]]:
        ids, recs = self._base_ids, self._base_recs
        for i in range(len(ids)):
            yield ids[i], REC.unpack_from(recs, i * REC.size)
        yield from list(self._overlay.items())

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        packs = self._packs
        for bid, (no, btype, off, length, raw) in self._iter_raw():
            yield bid, BlobLocation(packs[no], btype, off, length, raw)
