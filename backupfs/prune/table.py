"""Every index entry of the repository in one compact table: prune's peak memory.

A record is `id[32] type u8 offset u32 length u32 raw_length u32` (45 bytes) in one bytearray,
found through an open-addressing hash of uint32 record numbers; no Python object per blob.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence

from backupfs.format.index import decode_index
from backupfs.format.pack import Entry, PackEntry

__all__ = ["REC", "REC_SIZE", "BlobTable", "entries_of"]

REC = struct.Struct("<32sBIII")  # blob id, type, offset, length, raw length
REC_SIZE = REC.size
_META = struct.Struct("<32xBIII")  # a record without its id
_FIRST8 = struct.Struct("<Q")
_FIB = 0x9E3779B97F4A7C15  # 2**64 / golden ratio
_M64 = (1 << 64) - 1
_EMPTY_SLOT = 0


class BlobTable:
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
        return len(self.recs) // REC_SIZE

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
                o = g * REC_SIZE
                i = ((first8(recs, o)[0] * _FIB) & _M64) >> shift
                while True:
                    s = slots[i]
                    if s == _EMPTY_SLOT:
                        slots[i] = g + 1
                        break
                    so = (s - 1) * REC_SIZE
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
            o = (s - 1) * REC_SIZE
            if recs[o : o + 32] == bid:
                return s - 1
            i = (i + 1) & mask

    def entry(self, g: int) -> PackEntry:
        bid, btype, off, length, raw = REC.unpack_from(self.recs, g * REC_SIZE)
        return PackEntry(btype, bid, off, length, raw)

    def lengths(self, start: int, count: int) -> list[int]:
        """The stored (envelope) lengths of records start..start+count."""
        view = memoryview(self.recs)[start * REC_SIZE : (start + count) * REC_SIZE]
        try:
            return [n for _t, _o, n, _r in _META.iter_unpack(view)]
        finally:
            view.release()

    def copies(self, g: int) -> list[int]:
        return [g, *self.dups.get(g, ())]

    def add_index_file(self, plain: bytes) -> tuple[list[bytes], list[tuple[bytes, int, int]]]:
        """Appends an index file's entries (format.md 8) as records, one pack at a time and
        without a PackEntry per blob: a backup's index file can list a million small blobs, and
        this table is prune's peak memory. Decoding and its checks are format.index's.

        Returns (superseded file ids, [(pack id, first record, record count)]).
        """
        packs: list[tuple[bytes, int, int]] = []
        pack = REC.pack

        def add(pack_id: bytes, entries: Sequence[Entry]) -> None:
            start = len(self)
            self.recs += b"".join([pack(bid, btype, off, length, raw) for btype, bid, off, length, raw in entries])
            packs.append((pack_id, start, len(entries)))

        return decode_index(plain, add), packs

    def add_pack(self, entries: Sequence[PackEntry]) -> tuple[int, int]:
        """Appends one pack's entries as read from its own header; returns (first record, count)."""
        start = len(self)
        self.recs += b"".join([REC.pack(e.id, e.type, e.offset, e.length, e.raw_length) for e in entries])
        return start, len(entries)


def entries_of(recs: bytes | bytearray | memoryview) -> Iterator[Entry]:
    """Records as index entries `(type, id, offset, length, raw_length)`, for format.index's encoder."""
    for bid, btype, off, length, raw in REC.iter_unpack(recs):
        yield btype, bid, off, length, raw
