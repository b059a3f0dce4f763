"""Tree blobs: one msgpack object per directory (format.md section 9).

Two decoders. `decode_tree` gives every entry as stored and raises on any malformed one: for
code that must account for every blob an entry names or reproduce the tree (prune, copy).
`read_listing` applies the reader
rules of format.md 9 for everything that shows or restores entries: a tree can be forged by
anyone holding the key (or written by a buggy client), and one bad entry must cost that entry
only, never the folder. It leaves out what cannot be named, clamps what cannot be represented,
marks what cannot be read, and says what it did (`Listing.problems`).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

from backupfs.errors import IntegrityError
from backupfs.format._msgpack import is_int, unpack

FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV = "f", "d", "l", "p", "c", "b"

# What the platform can represent (Linux, and the FUSE protocol): the reader rules' bounds.
NAME_MAX = 255  # bytes in one file name
PATH_MAX = 4096  # bytes in a symlink target, its terminating NUL included
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 64 << 10  # one extended attribute's value
XATTR_LIST_MAX = 64 << 10  # all names of one entry, each with its NUL (what listxattr can return)
MODE_BITS = 0o7777  # permission bits incl. setuid, setgid, sticky
ID_MAX = 2**32 - 1  # uid_t, gid_t
NOBODY = 65534  # what the kernel shows for an id it cannot map (overflowuid): out-of-range ids
SIZE_MAX = 2**63 - 1  # off_t
NLINK_MAX = 2**32 - 1  # the FUSE protocol's link count
U64_MAX = 2**64 - 1  # ino_t, dev_t
FILE_HASH_SIZE = 32  # `fh`: keyed BLAKE3 of a file's whole content (format.md 9)
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
    "file_hash": "fh",
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
    # keyed hash of the whole content as read at backup (`crypto.ContentHasher`); None: not recorded
    file_hash: bytes | None = None
    # Not stored: set by `read_listing` when the entry's content (data, symlink target, listing)
    # cannot be used as stored; readers show the entry but refuse to read it, saying this.
    defect: str | None = None

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
        if self.file_hash is not None:
            out["fh"] = self.file_hash
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
                    g("ct", 0), g("s", 0), g("i"), g("dv"), g("nl"), g("rd"), g("lt"), g("x"), g("c"), g("st"), g("fh"),
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
        if self.file_hash is not None and not _is_file_hash(self.file_hash):
            raise IntegrityError("tree node has a malformed file hash")

    def is_safe_name(self) -> bool:
        """Whether the name can be created inside a directory without escaping it."""
        return name_problem(self.name) is None


def clamp_id(value: int) -> int:
    """A uid or gid as readers show it: one out of range as NOBODY (format.md 9)."""
    return value if 0 <= value <= ID_MAX else NOBODY


def name_problem(name: bytes) -> str | None:
    """Why `name` cannot be an entry of a folder (format.md 9), or None if it can."""
    if not name:
        return "its name is empty"
    if name in (b".", b".."):
        return f"its name is {name.decode()!r}"
    if b"/" in name:
        return "its name contains '/'"
    if b"\0" in name:
        return "its name contains a NUL byte"
    if len(name) > NAME_MAX:
        return f"its name is longer than {NAME_MAX} bytes"
    return None


def encode_tree(nodes: Sequence[Node]) -> bytes:
    """Entries are sorted by name so equal directories give equal blobs (and dedup)."""
    ordered = sorted(nodes, key=lambda n: n.name)
    return bytes(msgpack.packb({"v": 1, "entries": [n.to_msgpack_obj() for n in ordered]}, use_bin_type=True))


def decode_tree(data: bytes) -> list[Node]:
    obj = unpack(data, "tree blob")
    if not isinstance(obj, dict) or obj.get("v") != 1 or not isinstance(obj.get("entries"), list):
        raise IntegrityError("tree blob has an unknown layout")
    return [Node.from_msgpack_obj(e) for e in obj["entries"]]


def _is_file_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == FILE_HASH_SIZE


def _as_list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise IntegrityError(f"tree node has a malformed {what} list")
    return value


def _bytes_pair(item: object, what: str) -> tuple[bytes, bytes]:
    if not isinstance(item, list) or len(item) != 2 or not all(isinstance(v, bytes) for v in item):
        raise IntegrityError(f"tree node has a malformed {what}")
    return item[0], item[1]


# --------------------------------------------------------------------------- reader rules


SKIPPED, REPAIRED, UNREADABLE = "skipped", "repaired", "unreadable"  # EntryProblem.kind


@dataclasses.dataclass(frozen=True, slots=True)
class EntryProblem:
    """What the reader rules did to one stored entry: left it out (SKIPPED), showed a value of it
    repaired (REPAIRED), or kept it but refuse to read its content (UNREADABLE, as `Node.defect`)."""

    name: bytes | None  # as stored, cut at NAME_MAX + 1 bytes; None when it is not even bytes
    position: int  # in the stored list, for entries without a usable name
    message: str
    kind: str

    def text(self, folder: str) -> str:
        """One line naming the entry in `folder` (its path in the snapshot); not yet escaped."""
        if self.kind == SKIPPED:
            what = f"entry '{os.fsdecode(self.name)}'" if self.name is not None else f"entry #{self.position}"
            return f"{folder}: {what} left out: {self.message}"
        path = f"{folder.rstrip('/')}/{os.fsdecode(self.name or b'')}"
        return f"{path}: cannot be read: {self.message}" if self.kind == UNREADABLE else f"{path}: {self.message}"


class Listing(list[Node]):
    """A folder as readers see it: entries sorted by name, each name once, each usable as a file
    name, every value in its platform range. `problems` says what the rules changed; `unsorted`
    that the stored entries were out of order (readers bisect: they sort them)."""

    __slots__ = ("_repairs", "problems", "unsorted")

    def __init__(self, nodes: Iterable[Node] = (), problems: Iterable[EntryProblem] = (), unsorted: bool = False):
        super().__init__(nodes)
        self.problems = list(problems)
        self.unsorted = unsorted
        self._repairs: dict[bytes | None, list[str]] | None = None

    def repairs_of(self, name: bytes) -> list[str]:
        """What was repaired in the kept entry `name` (nothing, for nearly every entry)."""
        if not self.problems:
            return []
        if self._repairs is None:  # by name, once: a listing may hold many repaired entries
            self._repairs = {}
            for p in self.problems:
                if p.kind == REPAIRED:
                    self._repairs.setdefault(p.name, []).append(p.message)
        return self._repairs.get(name, [])


def read_listing(data: bytes) -> Listing:
    """A tree blob under the reader rules (format.md 9); raises only when the blob as a whole is
    unreadable. Of entries with equal names the first stored is kept."""
    obj = unpack(data, "tree blob")
    if not isinstance(obj, dict) or obj.get("v") != 1 or not isinstance(obj.get("entries"), list):
        raise IntegrityError("tree blob has an unknown layout")
    nodes: list[Node] = []
    notes_at: dict[int, tuple[int, list[str]]] = {}  # id(node) -> (position, notes), for the few with any
    problems: list[EntryProblem] = []
    unsorted = False
    prev = b""
    for pos, raw in enumerate(obj["entries"]):
        try:
            node: Node | None = Node.from_msgpack_obj(raw)
            notes: list[str] = []
        except IntegrityError:
            node, notes = _salvage(raw)
        if node is None:
            name = raw.get("n") if isinstance(raw, dict) else None
            problems.append(
                EntryProblem(name[: NAME_MAX + 1] if isinstance(name, bytes) else None, pos, notes[0], SKIPPED)
            )
            continue
        name = node.name
        if not name or len(name) > NAME_MAX or b"/" in name or b"\0" in name or name in (b".", b".."):
            problems.append(EntryProblem(name[: NAME_MAX + 1], pos, name_problem(name) or "", SKIPPED))
            continue
        notes += _apply_value_rules(node)
        if notes or node.defect is not None:
            notes_at[id(node)] = (pos, notes)
        unsorted = unsorted or name < prev
        prev = name
        nodes.append(node)
    if unsorted:
        nodes.sort(key=_name)  # stable: of equal names, the first stored stays first
    kept: list[Node] = []
    for node in nodes:
        pos, notes = notes_at.get(id(node), (-1, []))
        if kept and kept[-1].name == node.name:
            problems.append(EntryProblem(node.name, pos, "another entry of the same name comes first", SKIPPED))
            continue
        kept.append(node)
        if notes or node.defect is not None:
            problems += [EntryProblem(node.name, pos, n, REPAIRED) for n in notes]
            if node.defect is not None:
                problems.append(EntryProblem(node.name, pos, node.defect, UNREADABLE))
    return Listing(kept, problems, unsorted)


def _name(node: Node) -> bytes:
    return node.name


_INT_FIELDS = {"m": "mode", "u": "uid", "g": "gid", "mt": "mtime_ns", "at": "atime_ns", "ct": "ctime_ns", "s": "size"}
_OPTIONAL_INT_FIELDS = {"i": "inode", "dv": "device", "nl": "nlink", "rd": "rdev"}


def _salvage(raw: object) -> tuple[Node | None, list[str]]:
    """An entry `Node.from_msgpack_obj` refused, with each unreadable field treated as not
    recorded; None without a usable name and type. The notes say what was dropped."""
    if not isinstance(raw, dict):
        return None, ["it is not a map"]
    name, kind = raw.get("n"), raw.get("t")
    if not isinstance(name, bytes):
        return None, ["it has no name"]
    if not isinstance(kind, str) or kind not in NODE_TYPES:
        shown = repr(kind[:8]) if isinstance(kind, str) else "malformed"
        return None, [f"its type {shown} is unknown"]
    node = Node(name=name, type=kind)
    notes: list[str] = []
    for key, field in (*_INT_FIELDS.items(), *_OPTIONAL_INT_FIELDS.items()):
        value = raw.get(key)
        if is_int(value):
            setattr(node, field, value)
        elif key in raw and value is not None:
            notes.append(f"its field {key!r} is not an integer: left out")
    for key, field in (("U", "user"), ("G", "group")):
        value = raw.get(key)
        if isinstance(value, str):
            setattr(node, field, value)
        elif value is not None:
            notes.append(f"its field {key!r} is not a string: left out")
    target = raw.get("lt")
    node.link_target = target if isinstance(target, bytes) else None
    xattrs = raw.get("x")
    if xattrs is not None:
        pairs = xattrs if isinstance(xattrs, list) else []
        node.xattrs = [
            (p[0], p[1])
            for p in pairs
            if isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(v, bytes) for v in p)
        ]
        if len(node.xattrs) != len(pairs) or not isinstance(xattrs, list):
            notes.append("some extended attributes are malformed: left out")
    content = raw.get("c")
    if content is not None:
        try:
            node.content = _as_content(content)
        except IntegrityError:
            node.defect = "its chunk list is malformed"
    file_hash = raw.get("fh")
    if _is_file_hash(file_hash):
        node.file_hash = file_hash
    elif file_hash is not None:
        notes.append("its field 'fh' (whole-file hash) is malformed: left out")
    subtree = raw.get("st")
    if isinstance(subtree, bytes) and len(subtree) == 32:
        node.subtree = subtree
    elif subtree is not None and kind == DIR:
        node.defect = "its listing id is malformed"
    return node, notes


def _as_content(value: object) -> list[tuple[int, bytes]]:
    content = []
    for item in _as_list(value, "content"):
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise IntegrityError("tree node has malformed content list")
        off, bid = item
        if not is_int(off) or off < 0 or not isinstance(bid, bytes) or len(bid) != 32:
            raise IntegrityError("tree node has malformed content list")
        content.append((off, bid))
    return content


def _apply_value_rules(node: Node) -> list[str]:
    """Clamps what the platform cannot represent and marks content that cannot be read as
    stored (format.md 9); returns what it did. Nearly every node passes the first test."""
    if (
        0 <= node.mode <= MODE_BITS
        and 0 <= node.uid <= ID_MAX
        and 0 <= node.gid <= ID_MAX
        and 0 <= node.size <= SIZE_MAX
        and (node.inode is None or 0 <= node.inode <= U64_MAX)
        and (node.device is None or 0 <= node.device <= U64_MAX)
        and (node.nlink is None or 0 <= node.nlink <= NLINK_MAX)
        and (node.rdev is None or 0 <= node.rdev <= U64_MAX)
        and not node.xattrs
        and node.defect is None
        and (node.type != FILE or _ascending_within(node.content, node.size))
        and (node.type != SYMLINK or _target_problem(node.link_target) is None)
        and (node.type != DIR or node.subtree is not None)
    ):
        return []
    notes: list[str] = []
    if not 0 <= node.mode <= MODE_BITS:
        shown = node.mode & MODE_BITS if node.mode > 0 else 0
        notes.append(f"mode {node.mode:#o} is out of range: shown as {shown:#o}")
        node.mode = shown
    for field in ("uid", "gid"):
        value = getattr(node, field)
        if clamp_id(value) != value:
            notes.append(f"{field} {value} is out of range: shown as {NOBODY}")
            setattr(node, field, NOBODY)
    if not 0 <= node.size <= SIZE_MAX:
        if node.type == FILE:
            node.defect = node.defect or f"its size {node.size} is out of range"
        else:
            notes.append(f"size {node.size} is out of range: shown as 0")
        node.size = 0
    for field, top in (("inode", U64_MAX), ("device", U64_MAX), ("nlink", NLINK_MAX), ("rdev", U64_MAX)):
        value = getattr(node, field)
        if value is not None and not 0 <= value <= top:
            notes.append(f"{field} {value} is out of range: left out")
            setattr(node, field, None)
    if node.xattrs:
        notes += _xattr_rules(node)
    if node.type == FILE and node.defect is None and not _ascending_within(node.content, node.size):
        node.defect = "its chunk offsets are not ascending, or lie beyond its size"
    elif node.type == SYMLINK:
        node.defect = node.defect or _target_problem(node.link_target)
    elif node.type == DIR and node.subtree is None:
        node.defect = node.defect or "it is a folder without a listing"
    return notes


def _ascending_within(content: list[tuple[int, bytes]] | None, size: int) -> bool:
    """Chunk offsets strictly ascending, each inside the file: what bisection and holes assume."""
    prev = -1
    for off, _bid in content or ():
        if off <= prev or off >= size:
            return False
        prev = off
    return True


def _target_problem(target: bytes | None) -> str | None:
    if not target:
        return "it is a symlink without a target"
    if b"\0" in target:
        return "its symlink target contains a NUL byte"
    if len(target) >= PATH_MAX:
        return f"its symlink target is longer than {PATH_MAX - 1} bytes"
    return None


def _xattr_rules(node: Node) -> list[str]:
    """Keeps the extended attributes a file can have, the first of each name, within the size
    listxattr can return."""
    kept: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    listed = 0
    dropped: list[str] = []
    for name, value in node.xattrs or ():
        if not name or b"\0" in name or len(name) > XATTR_NAME_MAX:
            dropped.append("a malformed name")
        elif len(value) > XATTR_SIZE_MAX:
            dropped.append(f"a value over {XATTR_SIZE_MAX} bytes")
        elif name in seen:
            dropped.append("a repeated name")
        elif listed + len(name) + 1 > XATTR_LIST_MAX:
            dropped.append(f"names over {XATTR_LIST_MAX} bytes in all")
        else:
            seen.add(name)
            listed += len(name) + 1
            kept.append((name, value))
    node.xattrs = kept
    if not dropped:
        return []
    return [f"{len(dropped)} extended attributes left out ({dropped[0]})"]
