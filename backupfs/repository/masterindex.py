"""The in-memory union of all index files: blob id -> where it lives.

Memory matters (prune and mount load it whole): packs are interned into a list and each blob costs
one dict slot plus one small tuple, about 150 bytes, instead of a dataclass instance per blob.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Iterator

from backupfs.format.pack import PackEntry


@dataclasses.dataclass(frozen=True, slots=True)
class BlobLocation:
    pack_id: bytes
    type: int
    offset: int
    length: int
    raw_length: int


class MasterIndex:
    """Thread-safe for one writer and many readers (dict operations are atomic under the GIL)."""

    def __init__(self) -> None:
        self._packs: list[bytes] = []
        self._pack_no: dict[bytes, int] = {}
        # blob id -> (pack number, type, offset, length, raw_length)
        self._blobs: dict[bytes, tuple[int, int, int, int, int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def add_pack(self, pack_id: bytes, entries: Iterable[PackEntry]) -> None:
        with self._lock:
            no = self._pack_no.get(pack_id)
            if no is None:
                no = self._pack_no[pack_id] = len(self._packs)
                self._packs.append(pack_id)
            blobs = self._blobs
            for e in entries:
                if e.id not in blobs:
                    blobs[e.id] = (no, e.type, e.offset, e.length, e.raw_length)

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        rec = self._blobs.get(blob_id)
        if rec is None:
            return None
        no, btype, off, length, raw = rec
        return BlobLocation(self._packs[no], btype, off, length, raw)

    def raw_length(self, blob_id: bytes) -> int | None:
        rec = self._blobs.get(blob_id)
        return None if rec is None else rec[4]

    def pack_ids(self) -> set[bytes]:
        return set(self._pack_no)

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        packs = self._packs
        for bid, (no, btype, off, length, raw) in list(self._blobs.items()):
            yield bid, BlobLocation(packs[no], btype, off, length, raw)
