"""Snapshot objects (design.md section 10)."""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from backupfs.errors import IntegrityError
from backupfs.format._msgpack import field, pack, unpack_map

AAD: Final = b"bfs1S"


@dataclasses.dataclass(slots=True)
class Snapshot:
    time_ns: int
    host: str
    user: str
    paths: list[str]
    tree: bytes
    uid: int = 0
    gid: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)
    parent: bytes | None = None
    excludes: list[str] = dataclasses.field(default_factory=list)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    program: str = ""
    original: bytes | None = None

    def encode(self) -> bytes:
        return pack(
            {
                "time": self.time_ns,
                "host": self.host,
                "user": self.user,
                "uid": self.uid,
                "gid": self.gid,
                "paths": self.paths,
                "tags": self.tags,
                "tree": self.tree,
                "parent": self.parent,
                "excludes": self.excludes,
                "summary": self.summary,
                "program": self.program,
                "original": self.original,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Snapshot:
        what = "snapshot"
        obj = unpack_map(data, what)
        tree = field(obj, "tree", bytes, what)
        if len(tree) != 32:
            raise IntegrityError("snapshot: malformed tree id")
        paths = field(obj, "paths", list, what)
        tags = obj.get("tags") or []
        if not all(isinstance(p, str) for p in paths) or not all(isinstance(t, str) for t in tags):
            raise IntegrityError("snapshot: malformed paths or tags")
        parent = obj.get("parent")
        if parent is not None and not isinstance(parent, bytes):
            raise IntegrityError("snapshot: malformed parent")
        original = obj.get("original")
        return cls(
            time_ns=field(obj, "time", int, what),
            host=field(obj, "host", str, what),
            user=field(obj, "user", str, what),
            uid=int(obj.get("uid") or 0),
            gid=int(obj.get("gid") or 0),
            paths=paths,
            tags=tags,
            tree=tree,
            parent=parent,
            excludes=list(obj.get("excludes") or []),
            summary=dict(obj.get("summary") or {}),
            program=str(obj.get("program") or ""),
            original=original if isinstance(original, bytes) else None,
        )
