"""The repository config: a tiny plaintext header and an encrypted body (design.md 5)."""

from __future__ import annotations

import dataclasses
from typing import Final

from backupfs.chunker import MAX_CHUNK_LIMIT
from backupfs.errors import IntegrityError
from backupfs.format._msgpack import field, pack, unpack_map

MAGIC: Final = "backupfs"
VERSION: Final = 1


def config_aad(repo_id: bytes) -> bytes:
    return b"bfs1C" + repo_id


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigHeader:
    repo_id: bytes
    aead: str
    body: bytes

    def encode(self) -> bytes:
        return pack({"magic": MAGIC, "v": VERSION, "id": self.repo_id, "aead": self.aead, "body": self.body})

    @classmethod
    def decode(cls, data: bytes) -> ConfigHeader:
        what = "repository config"
        obj = unpack_map(data, what)
        if obj.get("magic") != MAGIC:
            raise IntegrityError("not a backupfs repository (config has the wrong magic)")
        if obj.get("v") != VERSION:
            raise IntegrityError(f"repository format version {obj.get('v')!r} is not supported (this is {VERSION})")
        repo_id = field(obj, "id", bytes, what)
        if len(repo_id) != 32:
            raise IntegrityError("repository config: malformed id")
        return cls(repo_id, field(obj, "aead", str, what), field(obj, "body", bytes, what))


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigBody:
    chunker: tuple[int, int, int]
    pack_size: int
    compression: str

    def encode(self) -> bytes:
        return pack({"chunker": list(self.chunker), "pack_size": self.pack_size, "compression": self.compression})

    @classmethod
    def decode(cls, data: bytes) -> ConfigBody:
        what = "repository config body"
        obj = unpack_map(data, what)
        chunker = field(obj, "chunker", list, what)
        if len(chunker) != 3 or not all(type(v) is int and v > 0 for v in chunker):
            raise IntegrityError("repository config: malformed chunker parameters")
        if not chunker[0] <= chunker[2] <= MAX_CHUNK_LIMIT:
            raise IntegrityError(f"repository config: chunk sizes {chunker[0]}-{chunker[2]} out of range")
        return cls(
            (chunker[0], chunker[1], chunker[2]),
            field(obj, "pack_size", int, what),
            field(obj, "compression", str, what),
        )
