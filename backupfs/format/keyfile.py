"""Key files: the master key wrapped by a password (format.md section 4)."""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from backupfs.errors import IntegrityError
from backupfs.format._msgpack import field, pack, unpack_map

META_AAD: Final = b"bfs1M"


def key_aad(repo_id: bytes) -> bytes:
    return b"bfs1K" + repo_id


@dataclasses.dataclass(frozen=True, slots=True)
class KeyFile:
    wrapped: dict[str, Any]  # kdf, ops, mem, salt, nonce, data
    meta: bytes

    def encode(self) -> bytes:
        return pack({"v": 1, **self.wrapped, "meta": self.meta})

    @classmethod
    def decode(cls, data: bytes) -> KeyFile:
        what = "key file"
        obj = unpack_map(data, what)
        if obj.get("v") != 1:
            raise IntegrityError("key file: unknown version")
        meta = field(obj, "meta", bytes, what)
        wrapped = {k: obj.get(k) for k in ("kdf", "ops", "mem", "salt", "nonce", "data")}
        return cls(wrapped, meta)


def encode_meta(host: str, user: str, created_ns: int) -> bytes:
    return pack({"host": host, "user": user, "created": created_ns})


def decode_meta(data: bytes) -> tuple[str, str, int]:
    what = "key metadata"
    obj = unpack_map(data, what)
    return field(obj, "host", str, what), field(obj, "user", str, what), field(obj, "created", int, what)
