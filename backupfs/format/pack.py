"""Pack files: blob envelopes, an encrypted header, a 4-byte length trailer (format.md 7)."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final, TypeVar

import msgpack

from backupfs.errors import IntegrityError
from backupfs.format._msgpack import is_int, unpack

DATA: Final = 0
TREE: Final = 1
TYPE_BYTES: Final = {DATA: b"D", TREE: b"T"}
HEADER_AAD: Final = b"bfs1H"
TRAILER = struct.Struct("<I")
ID_SIZE: Final = 32
# Offsets and lengths are below 2^32: the trailer stores a uint32, and so do the master index's
# records (architecture.md 4). Checked at decode, so a hostile value is a damaged file, not a crash later.
_U32_BITS: Final = 32
U32_LIMIT: Final = 1 << _U32_BITS

Entry = tuple[int, bytes, int, int, int]  # type, id, offset, length, raw_length: as stored
_SHOWN_MAX = 40


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

    def as_tuple(self) -> Entry:
        return self.type, self.id, self.offset, self.length, self.raw_length


def shown(value: object) -> str:
    """A stored value for an error message, cut short: a hostile file may hold a megabyte there."""
    text = repr(value)
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."


def entry_problem(item: object) -> str:
    """What is wrong with one stored `[type, id, offset, length, raw_length]`, or "" if nothing.

    The one rule for a blob entry, in a pack header and in an index file alike (format.md 7, 8).
    Returns instead of raising so a caller can name where the entry is; no object is made for a
    good entry, since an index streams millions of them.
    """
    if type(item) is not tuple and type(item) is not list:
        return "not an array"
    if len(item) != 5:
        return f"{len(item)} fields instead of 5"
    btype, bid, off, length, raw = item
    if not is_int(btype) or btype not in TYPE_BYTES:
        return f"blob type {shown(btype)} is not 0 (data) or 1 (tree)"
    if type(bid) is not bytes or len(bid) != ID_SIZE:
        return "blob id is not 32 bytes"
    for name, value in (("offset", off), ("length", length), ("raw length", raw)):
        if not is_int(value) or not 0 <= value < U32_LIMIT:
            return f"{name} {shown(value)} is out of range (an integer from 0 to 2^32-1)"
    return ""


def check_entries(entries: object, where: str) -> Sequence[Entry]:
    """`entries` if it is an array of good blob entries; else IntegrityError naming `where`."""
    if type(entries) is not tuple and type(entries) is not list:
        raise IntegrityError(f"{where}: the blob list is not an array")
    for item in entries:
        # A good entry passes these few C-level tests (they accept nothing entry_problem rejects:
        # tests/test_index_codec.py checks; `not (o | n | r) >> 32` is 0 <= each < 2^32 for ints).
        # Prune decodes millions of entries, so this loop is kept lean; a bad entry is named below.
        if type(item) is tuple and len(item) == 5:
            t, b, o, n, r = item
            if (
                type(t) is int
                and t in TYPE_BYTES
                and type(b) is bytes
                and len(b) == ID_SIZE
                and type(o) is int
                and type(n) is int
                and type(r) is int
                and not (o | n | r) >> _U32_BITS
            ):
                continue
        for i, bad in enumerate(entries):
            problem = entry_problem(bad)
            if problem:
                raise IntegrityError(f"{where}: entry {i}: {problem}")
        break  # it was a list, or some other form entry_problem accepts: all good
    return entries


def encode_header(entries: list[PackEntry]) -> bytes:
    return msgpack.packb([e.as_tuple() for e in entries], use_bin_type=True)  # type: ignore[no-any-return]


def decode_header(data: bytes) -> list[PackEntry]:
    obj = unpack(data, "pack header", use_list=False)
    return [PackEntry(*e) for e in check_entries(obj, "pack header malformed")]


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
