"""Tree blobs: one msgpack object per directory (design.md section 9)."""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Sequence
from typing import Any

import msgpack

from backupfs.errors import IntegrityError
from backupfs.format._msgpack import is_int, unpack

FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV = "f", "d", "l", "p", "c", "b"
NODE_TYPES = frozenset({FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV})
# node type -> the S_IFMT bits of st_mode, for everything that shows nodes as files (ls, mount)
FMT_OF_TYPE = {
    FILE: stat.S_IFREG,
    DIR: stat.S_IFDIR,
    SYMLINK: stat.S_IFLNK,
    FIFO: stat.S_IFIFO,
    CHARDEV: stat.S_IFCHR,
    BLOCKDEV: stat.S_IFBLK,
}

# node type -> the word JSON output uses for it (ls, find, diff)
TYPE_NAMES = {FILE: "file", DIR: "dir", SYMLINK: "symlink", FIFO: "fifo", CHARDEV: "chardev", BLOCKDEV: "blockdev"}

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
_FAST_KEYS = frozenset(_KEYS.values())


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
        """Spelled out field by field: this runs once per file per backup (tuples pack as arrays)."""
        out: dict[str, Any] = {"n": self.name, "t": self.type, "m": self.mode, "u": self.uid, "g": self.gid}
        if self.user is not None:
            out["U"] = self.user
        if self.group is not None:
            out["G"] = self.group
        out["mt"] = self.mtime_ns
        out["at"] = self.atime_ns
        out["ct"] = self.ctime_ns
        out["s"] = self.size
        if self.inode is not None:
            out["i"] = self.inode
        if self.device is not None:
            out["dv"] = self.device
        if self.nlink is not None:
            out["nl"] = self.nlink
        if self.rdev is not None:
            out["rd"] = self.rdev
        if self.link_target is not None:
            out["lt"] = self.link_target
        if self.xattrs is not None:
            out["x"] = self.xattrs
        if self.content is not None:
            out["c"] = self.content
        if self.subtree is not None:
            out["st"] = self.subtree
        return out

    @classmethod
    def from_msgpack_obj(cls, obj: Any) -> Node:
        if not isinstance(obj, dict):
            raise IntegrityError("tree node is not a map")
        if obj.keys() <= _FAST_KEYS:
            g = obj.get
            try:
                node = cls(
                    obj["n"], obj["t"], g("m", 0), g("u", 0), g("g", 0), g("U"), g("G"), g("mt", 0), g("at", 0),
                    g("ct", 0), g("s", 0), g("i"), g("dv"), g("nl"), g("rd"), g("lt"), g("x"), g("c"), g("st"),
                )  # fmt: skip
            except KeyError as exc:
                raise IntegrityError(f"tree node lacks a required field: {exc}") from exc
        else:
            kwargs: dict[str, Any] = {}
            for key, value in obj.items():
                field = _FIELDS.get(key) if isinstance(key, str) else None
                if field is not None:
                    kwargs[field] = value
            try:
                node = cls(**kwargs)
            except TypeError as exc:
                raise IntegrityError(f"tree node lacks a required field: {exc}") from exc
        node._validate_and_normalise()
        return node

    def _validate_and_normalise(self) -> None:
        """Checks every field's type: the restore and ls code trust them (a tree can be forged by
        anyone holding the key, and a bug must not turn into a crash far from its cause)."""
        if not isinstance(self.name, bytes) or not isinstance(self.type, str) or self.type not in NODE_TYPES:
            raise IntegrityError("tree node has an invalid name or type")
        for value in (self.mode, self.uid, self.gid, self.mtime_ns, self.atime_ns, self.ctime_ns, self.size):
            if not is_int(value):
                raise IntegrityError("tree node has a field that is not an integer")
        for opt in (self.inode, self.device, self.nlink, self.rdev):
            if opt is not None and not is_int(opt):
                raise IntegrityError("tree node has a field that is not an integer")
        for name in (self.user, self.group):
            if name is not None and not isinstance(name, str):
                raise IntegrityError("tree node has a user or group name that is not a string")
        if self.size < 0 or self.mode < 0:
            raise IntegrityError("tree node has a negative size or mode")
        if self.link_target is not None and not isinstance(self.link_target, bytes):
            raise IntegrityError("tree node has a malformed symlink target")
        if self.xattrs is not None:
            self.xattrs = [_bytes_pair(p, "xattr") for p in _as_list(self.xattrs, "xattrs")]
        if self.content is not None:
            content = []
            for item in _as_list(self.content, "content"):
                if not isinstance(item, list) or len(item) != 2:
                    raise IntegrityError("tree node has malformed content list")
                off, bid = item
                if not is_int(off) or off < 0 or not isinstance(bid, bytes) or len(bid) != 32:
                    raise IntegrityError("tree node has malformed content list")
                content.append((off, bid))
            self.content = content
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
    obj = unpack(data, "tree blob")
    if not isinstance(obj, dict) or obj.get("v") != 1 or not isinstance(obj.get("entries"), list):
        raise IntegrityError("tree blob has an unknown layout")
    return [Node.from_msgpack_obj(e) for e in obj["entries"]]


def _as_list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise IntegrityError(f"tree node has a malformed {what} list")
    return value


def _bytes_pair(item: object, what: str) -> tuple[bytes, bytes]:
    if not isinstance(item, list) or len(item) != 2 or not all(isinstance(v, bytes) for v in item):
        raise IntegrityError(f"tree node has a malformed {what}")
    return item[0], item[1]
