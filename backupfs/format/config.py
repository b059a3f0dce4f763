"""The repository config: a tiny plaintext header and an encrypted body (format.md 5)."""

from __future__ import annotations

import dataclasses
from typing import Final

from backupfs.chunker import params_error
from backupfs.compress import parse_compression
from backupfs.errors import IntegrityError, UsageError
from backupfs.format._msgpack import field, pack, unpack_map

MAGIC: Final = "backupfs"
VERSION: Final = 1
# Version 2 is version 1 whose body names an Object Lock retention: a reader of version 1 would
# write unprotected files and prune by plain deletes, so it must refuse such a repository.
LOCKED_VERSION: Final = 2
SUPPORTED_VERSIONS: Final = (VERSION, LOCKED_VERSION)
LOCK_MODES: Final = ("compliance", "governance")  # S3 Object Lock's retention modes
MAX_LOCK_DAYS: Final = 36500  # a century: a longer retention is a mistake (or an attack), not a plan
# The pack sizes `init --pack-size` may set, and so a reader accepts: smaller packs mean a request
# per few blobs, larger ones a whole gigabyte in flight per upload.
PACK_SIZE_RANGE: Final = (1 << 20, 1 << 30)


def config_aad(repo_id: bytes) -> bytes:
    return b"bfs1C" + repo_id


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigHeader:
    repo_id: bytes
    aead: str
    body: bytes
    version: int = VERSION

    def encode(self) -> bytes:
        return pack({"magic": MAGIC, "v": self.version, "id": self.repo_id, "aead": self.aead, "body": self.body})

    @classmethod
    def decode(cls, data: bytes) -> ConfigHeader:
        what = "repository config"
        obj = unpack_map(data, what)
        if obj.get("magic") != MAGIC:
            raise IntegrityError("not a backupfs repository (config has the wrong magic)")
        version = obj.get("v")
        if type(version) is not int or version not in SUPPORTED_VERSIONS:
            raise IntegrityError(
                f"repository format version {version!r} is not supported (this backupfs reads "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))})"
            )
        repo_id = field(obj, "id", bytes, what)
        if len(repo_id) != 32:
            raise IntegrityError("repository config: malformed id")
        return cls(repo_id, field(obj, "aead", str, what), field(obj, "body", bytes, what), version)


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectLockConfig:
    """`init --object-lock DAYS`: every file a snapshot younger than `days` needs stays undeletable
    (S3 Object Lock, in `mode`) until `days` after that snapshot (format.md "Object Lock")."""

    mode: str
    days: int

    def __post_init__(self) -> None:
        if self.mode not in LOCK_MODES:
            raise ValueError(f"retention mode must be one of {', '.join(LOCK_MODES)}")
        if not 1 <= self.days <= MAX_LOCK_DAYS:
            raise ValueError(f"retention must be 1 to {MAX_LOCK_DAYS} days")

    def encode(self) -> dict[str, object]:
        return {"mode": self.mode, "days": self.days}

    @classmethod
    def decode(cls, obj: object) -> ObjectLockConfig:
        what = "repository config: object_lock"
        if not isinstance(obj, dict):
            raise IntegrityError(f"{what} is malformed")
        mode, days = obj.get("mode"), obj.get("days")
        if mode not in LOCK_MODES:
            raise IntegrityError(f"{what}: unknown retention mode {mode!r}")
        if type(days) is not int or not 1 <= days <= MAX_LOCK_DAYS:
            raise IntegrityError(f"{what}: retention of {days!r} days is out of range (1-{MAX_LOCK_DAYS})")
        return cls(str(mode), days)


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigBody:
    chunker: tuple[int, int, int]
    pack_size: int
    compression: str
    object_lock: ObjectLockConfig | None = None

    def encode(self) -> bytes:
        obj: dict[str, object] = {
            "chunker": list(self.chunker),
            "pack_size": self.pack_size,
            "compression": self.compression,
        }
        if self.object_lock is not None:  # absent otherwise: the body of version 1, unchanged
            obj["object_lock"] = self.object_lock.encode()
        return pack(obj)

    @classmethod
    def decode(cls, data: bytes) -> ConfigBody:
        what = "repository config body"
        obj = unpack_map(data, what)
        chunker = field(obj, "chunker", list, what)
        if len(chunker) != 3 or not all(type(v) is int and v > 0 for v in chunker):
            raise IntegrityError("repository config: malformed chunker parameters")
        problem = params_error((chunker[0], chunker[1], chunker[2]))
        if problem:
            raise IntegrityError(f"repository config: {problem}")
        pack_size = field(obj, "pack_size", int, what)
        if not PACK_SIZE_RANGE[0] <= pack_size <= PACK_SIZE_RANGE[1]:
            raise IntegrityError(f"repository config: pack size {pack_size} out of range")
        compression = field(obj, "compression", str, what)
        try:
            parse_compression(compression)
        except UsageError as exc:  # the user chose nothing here: the stored value is damaged
            raise IntegrityError(f"repository config: {exc}") from exc
        lock = obj.get("object_lock")
        return cls(
            (chunker[0], chunker[1], chunker[2]),
            pack_size,
            compression,
            None if lock is None else ObjectLockConfig.decode(lock),
        )
