"""Index files: which pack holds which blob (design.md section 8)."""

from __future__ import annotations

import dataclasses
from typing import Final

import msgpack

from backupfs.errors import IntegrityError
from backupfs.format._msgpack import unpack
from backupfs.format.pack import PackEntry

AAD: Final = b"bfs1I"


@dataclasses.dataclass(slots=True)
class IndexFile:
    packs: dict[bytes, list[PackEntry]] = dataclasses.field(default_factory=dict)
    supersedes: list[bytes] = dataclasses.field(default_factory=list)

    def encode(self) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            {
                "supersedes": self.supersedes,
                "packs": [[pid, [e.as_list() for e in entries]] for pid, entries in self.packs.items()],
            },
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> IndexFile:
        obj = unpack(data, "index file", use_list=False)
        if not isinstance(obj, dict) or not isinstance(obj.get("packs"), tuple):
            raise IntegrityError("index file malformed")
        sup = obj.get("supersedes", ())
        if not isinstance(sup, tuple) or not all(isinstance(s, bytes) and len(s) == 32 for s in sup):
            raise IntegrityError("index file malformed")
        packs: dict[bytes, list[PackEntry]] = {}
        for item in obj["packs"]:
            if not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], bytes) or len(item[0]) != 32:
                raise IntegrityError("index pack entry malformed")
            if not isinstance(item[1], tuple):
                raise IntegrityError("index pack entry malformed")
            packs[item[0]] = [PackEntry.from_list(e) for e in item[1]]
        return cls(packs, list(sup))
