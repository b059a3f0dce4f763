"""Lock files (format.md section 11)."""

from __future__ import annotations

import dataclasses
from typing import Final

from backupfs.format._msgpack import field, pack, unpack_map

AAD: Final = b"bfs1L"


@dataclasses.dataclass(frozen=True, slots=True)
class LockInfo:
    time_ns: int
    exclusive: bool
    host: str
    user: str
    pid: int

    def encode(self) -> bytes:
        return pack(
            {"time": self.time_ns, "exclusive": self.exclusive, "host": self.host, "user": self.user, "pid": self.pid}
        )

    @classmethod
    def decode(cls, data: bytes) -> LockInfo:
        what = "lock file"
        obj = unpack_map(data, what)
        return cls(
            field(obj, "time", int, what),
            field(obj, "exclusive", bool, what),
            field(obj, "host", str, what),
            field(obj, "user", str, what),
            field(obj, "pid", int, what),
        )
