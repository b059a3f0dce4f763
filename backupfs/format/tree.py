"""Tree blobs: one msgpack object per directory (design.md section 9)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import msgpack

from backupfs.errors import IntegrityError

FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV = "f", "d", "l", "p", "c", "b"
NODE_TYPES = frozenset({FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV})

# dataclass field -> msgpack key; fields left at None are not written.
_KEYS: dict[str, str] = {
    "name": "n",
    "type": "t",
    "mode": "m",
    "uid": "u",
    "gid": "g",
    "user": "U",
    "group": "G",
    "mtime_ns": "mt",
    "atime_ns": "at",
    "ctime_ns": "ct",
    "size": "s",
    "inode": "i",
    "device": "dv",
    "nlink": "nl",
    "rdev": "rd",
    "link_target": "lt",
    "xattrs": "x",
    "content": "c",
    "subtree": "st",
}
_FIELDS = {v: k for k, v in _KEYS.items()}


@dataclasses.dataclass(slots=True)
class Node:
    """One directory entry. `content` is [(offset, blob id)], gaps are holes (sparse files)."""

    name: bytes
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str | None = None
    group: str | None = None
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    inode: int | None = None
    device: int | None = None
    nlink: int | None = None
    rdev: int | None = None
    link_target: bytes | None = None
    xattrs: list[tuple[bytes, bytes]] | None = None
    content: list[tuple[int, bytes]] | None = None
    subtree: bytes | None = None

    def to_msgpack_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field, key in _KEYS.items():
            value = getattr(self, field)
            if value is None:
                continue
            if field == "xattrs" or field == "content":
                value = [list(pair) for pair in value]
            out[key] = value
        return out

    @classmethod
    def from_msgpack_obj(cls, obj: Any) -> Node:
        if not isinstance(obj, dict):
            raise IntegrityError("tree node is not a map")
        kwargs: dict[str, Any] = {}
        for key, value in obj.items():
            field = _FIELDS.get(key)
            if field is not None:
                kwargs[field] = value
        try:
            node = cls(**kwargs)
        except TypeError as exc:
            raise IntegrityError(f"tree node lacks a required field: {exc}") from exc
        node._validate_and_normalise()
        return node

    def _validate_and_normalise(self) -> None:
        if not isinstance(self.name, bytes) or self.type not in NODE_TYPES:
            raise IntegrityError("tree node has an invalid name or type")
        for field in ("mode", "uid", "gid", "mtime_ns", "atime_ns", "ctime_ns", "size"):
            if not isinstance(getattr(self, field), int):
                raise IntegrityError(f"tree node field {field} is not an integer")
        if self.xattrs is not None:
            self.xattrs = [(bytes(k), bytes(v)) for k, v in self.xattrs]
        if self.content is not None:
            try:
                self.content = [(int(off), bytes(bid)) for off, bid in self.content]
            except (TypeError, ValueError) as exc:
                raise IntegrityError("tree node has malformed content list") from exc
        if self.subtree is not None and (not isinstance(self.subtree, bytes) or len(self.subtree) != 32):
            raise IntegrityError("tree node has a malformed subtree id")

    def is_safe_name(self) -> bool:
        """Whether the name can be created inside a directory without escaping it."""
        return bool(self.name) and self.name not in (b".", b"..") and b"/" not in self.name and b"\0" not in self.name


def encode_tree(nodes: Sequence[Node]) -> bytes:
    """Entries are sorted by name so equal directories give equal blobs (and dedup)."""
    ordered = sorted(nodes, key=lambda n: n.name)
    return bytes(msgpack.packb({"v": 1, "entries": [n.to_msgpack_obj() for n in ordered]}, use_bin_type=True))


def decode_tree(data: bytes) -> list[Node]:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise IntegrityError(f"tree blob is not valid msgpack: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("v") != 1 or not isinstance(obj.get("entries"), list):
        raise IntegrityError("tree blob has an unknown layout")
    return [Node.from_msgpack_obj(e) for e in obj["entries"]]
