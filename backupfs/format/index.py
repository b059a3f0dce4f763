"""Index files: which pack holds which blob (format.md section 8).

The one codec for them. `decode_index` streams a file one pack at a time and hands each pack's
checked entries to a callback, so prune can put millions of blobs into its compact table without
a Python object per blob; `IndexFile.decode` is the same decoder collecting `PackEntry` objects.
Both therefore accept and reject exactly the same bytes, with the same messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import msgpack

from backupfs.errors import IntegrityError
from backupfs.format.pack import ID_SIZE, Entry, PackEntry, check_entries, shown

__all__ = ["AAD", "KEYS", "IndexFile", "decode_index", "encode_index"]

AAD: Final = b"bfs1I"
PACKS: Final = "packs"
SUPERSEDES: Final = "supersedes"
KEYS: Final = (SUPERSEDES, PACKS)  # the only keys, in the order they are written

# Exceptions msgpack's streaming Unpacker raises on bad bytes (ValueError covers bad UTF-8 and an
# unexpected type where a map or array header is read; TypeError, an unhashable map key).
_MSGPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


def decode_index(data: bytes, add_pack: Callable[[bytes, Sequence[Entry]], None]) -> list[bytes]:
    """Checks an index file's plaintext and calls `add_pack(pack id, entries)` for each pack, in
    file order; returns the ids of the index files it supersedes.

    `entries` are the decoded `(type, id, offset, length, raw_length)` tuples, each already
    checked; the callback may keep them or copy them elsewhere. Any deviation from format.md 8
    raises IntegrityError saying what and where (before or after some callbacks: callers discard
    what they collected).
    """
    unpacker = msgpack.Unpacker(raw=False, use_list=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    supersedes: list[bytes] | None = None
    seen: set[bytes] = set()
    has_packs = False
    try:
        for _ in range(_header(unpacker.read_map_header, "the file", "a map")):
            key = unpacker.unpack()
            if key == SUPERSEDES and supersedes is None:
                supersedes = _supersedes(unpacker.unpack())
            elif key == PACKS and not has_packs:
                has_packs = True
                for i in range(_header(unpacker.read_array_header, repr(PACKS), "an array")):
                    pack_id, entries = _pack(unpacker.unpack(), i, seen)
                    add_pack(pack_id, entries)
            elif key in KEYS:
                raise IntegrityError(f"index file malformed: key {key!r} appears twice")
            else:
                raise IntegrityError(f"index file malformed: unknown key {shown(key)}")
        end = unpacker.tell()
    except _MSGPACK_ERRORS as exc:
        raise IntegrityError("index file is not valid msgpack") from exc
    if end != len(data):
        raise IntegrityError("index file malformed: trailing data after the map")
    if not has_packs:
        raise IntegrityError(f"index file malformed: key {PACKS!r} is missing")
    return supersedes or []


def _header(read: Callable[[], int], what: str, kind: str) -> int:
    """A map or array header; msgpack says only ValueError when the bytes hold another type."""
    try:
        return read()
    except msgpack.UnpackException:
        raise  # truncated or broken bytes: not valid msgpack
    except ValueError as exc:
        raise IntegrityError(f"index file malformed: {what} is not {kind}") from exc


def _supersedes(value: object) -> list[bytes]:
    if type(value) is not tuple:
        raise IntegrityError(f"index file malformed: {SUPERSEDES!r} is not an array")
    for i, sid in enumerate(value):
        if type(sid) is not bytes or len(sid) != ID_SIZE:
            raise IntegrityError(f"index file malformed: {SUPERSEDES!r} entry {i} is not a 32-byte id")
    return list(value)


def _pack(item: object, i: int, seen: set[bytes]) -> tuple[bytes, Sequence[Entry]]:
    if type(item) is not tuple or len(item) != 2:
        raise IntegrityError(f"index file malformed: pack {i} is not a [pack id, blobs] pair")
    pack_id, entries = item
    if type(pack_id) is not bytes or len(pack_id) != ID_SIZE:
        raise IntegrityError(f"index file malformed: pack {i}: the pack id is not 32 bytes")
    where = f"index file malformed: pack {pack_id.hex()[:16]}"
    if pack_id in seen:
        raise IntegrityError(f"{where} is listed twice")
    seen.add(pack_id)
    checked = check_entries(entries, where)
    if not checked:
        raise IntegrityError(f"{where} lists no blobs")
    return pack_id, checked


def encode_index(packs: Iterable[tuple[bytes, Iterable[Entry]]], supersedes: Sequence[bytes]) -> bytes:
    """An index file's plaintext, streamed: no object per blob is needed beyond the one written.

    `packs` are (pack id, entries as `(type, id, offset, length, raw_length)`); it may be a
    generator, read once.
    """
    packer = msgpack.Packer(use_bin_type=True)
    packs = list(packs)
    out = bytearray(packer.pack_map_header(len(KEYS)))
    out += packer.pack(SUPERSEDES) + packer.pack(list(supersedes))
    out += packer.pack(PACKS) + packer.pack_array_header(len(packs))
    pack = packer.pack
    for pack_id, entries in packs:
        listed = entries if isinstance(entries, Sequence) else list(entries)
        out += packer.pack_array_header(2) + pack(pack_id) + packer.pack_array_header(len(listed))
        for entry in listed:
            out += pack(entry)
    return bytes(out)


@dataclasses.dataclass(slots=True)
class IndexFile:
    packs: dict[bytes, list[PackEntry]] = dataclasses.field(default_factory=dict)
    supersedes: list[bytes] = dataclasses.field(default_factory=list)

    def encode(self) -> bytes:
        packs = self.packs.items()
        return encode_index(((pid, [e.as_tuple() for e in es]) for pid, es in packs), self.supersedes)

    @classmethod
    def decode(cls, data: bytes) -> IndexFile:
        packs: dict[bytes, list[PackEntry]] = {}

        def add(pack_id: bytes, entries: Sequence[Entry]) -> None:
            packs[pack_id] = [PackEntry(*e) for e in entries]

        supersedes = decode_index(data, add)
        return cls(packs, supersedes)
