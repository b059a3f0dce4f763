"""Pack files: blob envelopes, an encrypted header, a 4-byte length trailer (design.md 7)."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Final, TypeVar

import msgpack

from backupfs.errors import IntegrityError
from backupfs.format._msgpack import is_int, unpack

DATA: Final = 0
TREE: Final = 1
TYPE_BYTES: Final = {DATA: b"D", TREE: b"T"}
HEADER_AAD: Final = b"bfs1H"
TRAILER = struct.Struct("<I")


def blob_aad(blob_type: int, blob_id: bytes) -> bytes:
    """Binds a blob envelope to its type and id so it cannot be swapped for another."""
    return b"bfs1" + TYPE_BYTES[blob_type] + blob_id


@dataclasses.dataclass(frozen=True, slots=True)
class PackEntry:
    type: int
    id: bytes
    offset: int
    length: int
    raw_length: int

    def as_list(self) -> list[object]:
        return [self.type, self.id, self.offset, self.length, self.raw_length]

    @classmethod
    def from_list(cls, item: object) -> PackEntry:
        if not isinstance(item, list | tuple) or len(item) != 5:
            raise IntegrityError("pack entry malformed")
        btype, bid, off, length, raw = item
        if (
            not is_int(btype)
            or btype not in TYPE_BYTES
            or not isinstance(bid, bytes)
            or len(bid) != 32
            or not all(is_int(v) and v >= 0 for v in (off, length, raw))
        ):
            raise IntegrityError("pack entry malformed")
        return cls(btype, bid, off, length, raw)


def encode_header(entries: list[PackEntry]) -> bytes:
    return msgpack.packb([e.as_list() for e in entries], use_bin_type=True)  # type: ignore[no-any-return]


def decode_header(data: bytes) -> list[PackEntry]:
    obj = unpack(data, "pack header", use_list=False)
    if not isinstance(obj, tuple):
        raise IntegrityError("pack header malformed")
    return [PackEntry.from_list(e) for e in obj]


def header_location(pack_size: int, trailer: bytes) -> tuple[int, int]:
    """From the last 4 bytes of a pack, where its header envelope lies."""
    if len(trailer) != TRAILER.size:
        raise IntegrityError("pack is truncated")
    (hlen,) = TRAILER.unpack(trailer)
    if hlen + TRAILER.size > pack_size or hlen == 0:
        raise IntegrityError("pack header length is out of range")
    return pack_size - TRAILER.size - hlen, hlen


T = TypeVar("T")


def read_ranges(items: Iterable[T], span: Callable[[T], tuple[int, int]], gap: int) -> Iterator[list[T]]:
    """Groups items of one pack, sorted by offset, into ranges read with one request each;
    `span(item)` is its (offset, length). Unused bytes between two items are read through when
    they are at most `gap`: on S3 a request costs about as much as a megabyte of transfer."""
    group: list[T] = []
    end = 0
    for item in items:
        offset, length = span(item)
        if group and offset - end > gap:
            yield group
            group = []
        group.append(item)
        end = max(end, offset + length) if len(group) > 1 else offset + length
    if group:
        yield group
