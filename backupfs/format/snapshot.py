"""Snapshot objects (format.md section 10)."""

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
    replaces: list[bytes] = dataclasses.field(default_factory=list)
    repaired: bytes | None = None  # the damaged snapshot `repair snapshots` made this from; hides nothing

    def encode(self) -> bytes:
        extra = {"replaces": self.replaces} if self.replaces else {}  # absent unless a rewrite (tag)
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
                **extra,
                **({"repaired": self.repaired} if self.repaired is not None else {}),
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
        tags = _optional(obj, "tags", list, [])
        excludes = _optional(obj, "excludes", list, [])
        if not all(isinstance(p, str) for p in [*paths, *tags, *excludes]):
            raise IntegrityError("snapshot: malformed paths, tags or excludes")
        parent = _optional(obj, "parent", bytes, None)
        original = _optional(obj, "original", bytes, None)
        repaired = _optional(obj, "repaired", bytes, None)
        if any(v is not None and len(v) != 32 for v in (parent, original, repaired)):
            raise IntegrityError("snapshot: malformed parent, original or repaired id")
        replaces = _optional(obj, "replaces", list, [])
        if not all(isinstance(r, bytes) and len(r) == 32 for r in replaces):
            raise IntegrityError("snapshot: malformed replaces list")
        return cls(
            time_ns=field(obj, "time", int, what),
            host=field(obj, "host", str, what),
            user=field(obj, "user", str, what),
            uid=_optional(obj, "uid", int, 0),
            gid=_optional(obj, "gid", int, 0),
            paths=paths,
            tags=tags,
            tree=tree,
            parent=parent,
            excludes=excludes,
            summary=_optional(obj, "summary", dict, {}),
            program=_optional(obj, "program", str, ""),
            original=original,
            replaces=replaces,
            repaired=repaired,
        )


def _optional(obj: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """An optional field: absent or nil gives `default`, any other type is an error."""
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise IntegrityError(f"snapshot: field {key!r} is malformed")
    return value
