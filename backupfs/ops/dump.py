"""Streaming a file, or a folder as a tar or zip archive, out of a snapshot (`backupfs dump`).

Everything is written as it is read: a file's chunks a few ahead of the writer, a folder one
listing per level, so memory stays bounded whatever the size (a few chunks, and one path per
hard-linked inode). The tar is POSIX pax, as GNU tar and bsdtar read it: modes, owners (ids and
names), times to the nanosecond (mtime, atime, ctime), symlinks, hard links, devices and fifos,
extended attributes (`SCHILY.xattr.*`) and POSIX ACLs (`SCHILY.acl.access/default`, as star and
GNU tar write them). Zip keeps what zip can: modes, mtime (to 2 s), symlinks; hard links are
stored as copies and devices and fifos are left out. A chunk that cannot be read is written as
zeros of its length, so the archive stays well-formed; the path is reported and the command ends
with exit code 4.
"""

from __future__ import annotations

import collections
import os
import struct
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from backupfs.errors import BackupfsError
from backupfs.format.pack import DATA
from backupfs.format.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, FMT_OF_TYPE, SYMLINK, Node
from backupfs.ops.walk import walk
from backupfs.repository.repo import Repository

CHUNKS_AHEAD = 4  # chunks fetched ahead of the writer: hides latency, bounds memory (4 x 8 MiB)
ZERO_BLOCK = 1 << 20  # holes and damaged chunks are written in pieces of this size
COPY_BUFFER = 1 << 20  # tarfile's reads of a file's content (its default, 16 KiB, costs 64x the calls)
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the oldest time a zip entry can hold
ZIP_LAST = (2107, 12, 31, 23, 59, 58)

_TAR_TYPES = {
    FILE: tarfile.REGTYPE,
    DIR: tarfile.DIRTYPE,
    SYMLINK: tarfile.SYMTYPE,
    FIFO: tarfile.FIFOTYPE,
    CHARDEV: tarfile.CHRTYPE,
    BLOCKDEV: tarfile.BLKTYPE,
}
_ACL_KEYS = {b"system.posix_acl_access": "SCHILY.acl.access", b"system.posix_acl_default": "SCHILY.acl.default"}
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_TAGS = {0x01: "user:", 0x02: "user:{id}", 0x04: "group:", 0x08: "group:{id}", 0x10: "mask:", 0x20: "other:"}


class Dumper:
    """Writes to `out`; `warn` hears of each entry that could not be written faithfully."""

    def __init__(self, repo: Repository, out: BinaryIO, warn: Callable[[str], None]) -> None:
        self.repo = repo
        self.out = out
        self.warn = warn
        self.damaged: list[bytes] = []
        self._pool = ThreadPoolExecutor(CHUNKS_AHEAD, thread_name_prefix="bfs-dump")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ single file

    def write_file(self, path: bytes, node: Node) -> None:
        for piece in self.content(path, node):
            self.out.write(piece)

    def content(self, path: bytes, node: Node) -> Iterator[bytes | memoryview]:
        """Exactly `node.size` bytes: chunks in order, holes as zeros, a chunk list that claims
        more or overlaps cut to fit (a tar header has promised the size already)."""
        pos, size = 0, node.size
        items = node.content or []
        pending: collections.deque[tuple[int, Future[bytes]]] = collections.deque()
        i = 0
        while pending or i < len(items):
            while i < len(items) and len(pending) < CHUNKS_AHEAD:
                offset, blob_id = items[i]
                pending.append((offset, self._pool.submit(self.repo.load_blob, DATA, blob_id)))
                i += 1
            offset, future = pending.popleft()
            if offset >= size:
                continue
            if offset > pos:
                yield from _zeros(offset - pos)
                pos = offset
            end = items[i - len(pending)][0] if i - len(pending) < len(items) else size
            try:
                data = memoryview(future.result())
            except BackupfsError as exc:
                self._damaged(path, exc)
                if end > pos:
                    yield from _zeros(min(end, size) - pos)
                    pos = min(end, size)
                continue
            start = pos - offset  # > 0 only when chunks overlap, which a backup never writes
            piece = data[start : start + size - pos] if start < len(data) else data[:0]
            if piece:
                yield piece
                pos += len(piece)
        if size > pos:
            yield from _zeros(size - pos)

    def _damaged(self, path: bytes, exc: BaseException) -> None:
        if not self.damaged or self.damaged[-1] != path:
            self.damaged.append(path)
            self.warn(f"{os.fsdecode(path)}: {exc} (written as zeros)")

    # ------------------------------------------------------------------ archives

    def entries(self, path: bytes, node: Node) -> Iterator[tuple[bytes, Node]]:
        """`node` at `path`, then everything below it, each folder before its contents (through
        the one tree walk: any depth, one path buffer)."""
        yield path, node
        if node.type != DIR or node.subtree is None:
            return
        for step in walk(self.repo.load_tree, node.subtree, prefix=path.rstrip(b"/")):
            assert step.node is not None
            yield step.path, step.node

    def write_tar(self, path: bytes, node: Node) -> None:
        links: dict[tuple[int, int], str] = {}
        with tarfile.open(fileobj=self.out, mode="w|", format=tarfile.PAX_FORMAT, errors="surrogateescape") as tar:
            tar.copybufsize = COPY_BUFFER  # type: ignore[attr-defined]  # read by addfile, not in typeshed
            for entry_path, entry in self.entries(path, node):
                if not entry_path.strip(b"/"):
                    continue  # the snapshot's root itself: no name to give it
                info = self._tar_info(entry_path, entry, links)
                if info.type == tarfile.REGTYPE:
                    tar.addfile(info, _Reader(self.content(entry_path, entry)))
                else:
                    tar.addfile(info)

    def _tar_info(self, path: bytes, node: Node, links: dict[tuple[int, int], str]) -> tarfile.TarInfo:
        name = os.fsdecode(path.lstrip(b"/"))
        info = tarfile.TarInfo(name)
        info.type = _TAR_TYPES[node.type]
        info.mode = node.mode & 0o7777
        info.uid, info.gid = node.uid, node.gid
        info.uname, info.gname = node.user or "", node.group or ""
        info.mtime = max(0, node.mtime_ns // 10**9)
        pax = {"mtime": _pax_time(node.mtime_ns), "atime": _pax_time(node.atime_ns), "ctime": _pax_time(node.ctime_ns)}
        if node.type == FILE:
            inode = (node.device or 0, node.inode or 0)
            if node.nlink is not None and node.nlink > 1 and node.inode and inode in links:
                info.type, info.linkname = tarfile.LNKTYPE, links[inode]
            else:
                if node.nlink is not None and node.nlink > 1 and node.inode:
                    links[inode] = name
                info.size = node.size
        elif node.type == SYMLINK:
            info.linkname = os.fsdecode(node.link_target or b"")
        elif node.type in (CHARDEV, BLOCKDEV):
            info.devmajor, info.devminor = os.major(node.rdev or 0), os.minor(node.rdev or 0)
        for xname, value in node.xattrs or ():
            if xname in _ACL_KEYS:
                text = acl_text(value)
                if text is None:
                    self.warn(f"{name}: unreadable {os.fsdecode(xname)} left out")
                else:
                    pax[_ACL_KEYS[xname]] = text
                continue
            try:
                key = "SCHILY.xattr." + xname.decode("utf-8")
            except UnicodeDecodeError:
                self.warn(f"{name}: extended attribute '{os.fsdecode(xname)}' has a name tar cannot hold; left out")
                continue
            pax[key] = value.decode("utf-8", "surrogateescape")
        info.pax_headers = pax
        return info

    def write_zip(self, path: bytes, node: Node) -> None:
        with zipfile.ZipFile(_Unseekable(self.out), "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for entry_path, entry in self.entries(path, node):
                if not entry_path.strip(b"/"):
                    continue
                name = entry_path.lstrip(b"/")
                try:
                    text = name.decode("utf-8")
                except UnicodeDecodeError:
                    text = name.decode("utf-8", "backslashreplace")
                    self.warn(f"{text}: the name is not UTF-8, which zip needs; stored with \\x escapes")
                if entry.type in (FIFO, CHARDEV, BLOCKDEV):
                    self.warn(f"{text}: zip cannot hold a {'fifo' if entry.type == FIFO else 'device'}; left out")
                    continue
                info = zipfile.ZipInfo(text + "/" if entry.type == DIR else text, _zip_time(entry.mtime_ns))
                info.create_system = 3  # Unix: the high 16 bits of external_attr are st_mode
                info.external_attr = (FMT_OF_TYPE[entry.type] | (entry.mode & 0o7777)) << 16
                if entry.type == DIR:
                    info.external_attr |= 0x10  # MS-DOS directory flag
                    zf.writestr(info, b"")
                elif entry.type == SYMLINK:
                    zf.writestr(info, entry.link_target or b"", zipfile.ZIP_STORED)
                else:
                    info.compress_type = zipfile.ZIP_DEFLATED
                    with zf.open(info, "w", force_zip64=entry.size >= zipfile.ZIP64_LIMIT) as dst:
                        for piece in self.content(entry_path, entry):
                            dst.write(piece)


def acl_text(value: bytes) -> str | None:
    """A Linux POSIX ACL xattr (version 2) in the long text form tar stores, ids in decimal
    (the names of the machine that made the backup may not exist here); None if malformed."""
    if len(value) < 4 or (len(value) - 4) % _ACL_ENTRY.size or int.from_bytes(value[:4], "little") != 2:
        return None
    lines = []
    for tag, perm, ident in _ACL_ENTRY.iter_unpack(value[4:]):
        head = _ACL_TAGS.get(tag)
        if head is None:
            return None
        bits = "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
        lines.append(head.format(id=ident) + ":" + bits)
    return "\n".join(lines) + "\n"


def _pax_time(ns: int) -> str:
    """Exact decimal seconds: a float would lose the nanoseconds (and a pre-1970 time its sign)."""
    sec, frac = divmod(abs(ns), 10**9)
    return f"{'-' if ns < 0 else ''}{sec}.{frac:09d}"


def _zip_time(ns: int) -> tuple[int, int, int, int, int, int]:
    tm = time.localtime(ns // 10**9) if ns > 0 else None
    when = tuple(tm[:6]) if tm is not None else ZIP_EPOCH
    return max(ZIP_EPOCH, min(ZIP_LAST, when))  # type: ignore[return-value]


def _zeros(n: int) -> Iterator[bytes]:
    block = bytes(min(n, ZERO_BLOCK))
    while n > 0:
        k = min(n, len(block))
        yield block if k == len(block) else block[:k]
        n -= k


class _Reader:
    """The file object tarfile copies `size` bytes from, over a stream of pieces: each read must
    return all it asks for (tarfile takes a short read for a truncated file)."""

    def __init__(self, pieces: Iterator[bytes | memoryview]) -> None:
        self._pieces = pieces
        self._buf = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        parts = []
        while n != 0:
            if not self._buf:
                piece = next(self._pieces, None)
                if piece is None:
                    break
                self._buf = memoryview(piece)
            take = self._buf if n < 0 else self._buf[:n]
            parts.append(take)
            self._buf = self._buf[len(take) :]
            n -= len(take) if n > 0 else 0
        return b"".join(parts)


class _Unseekable:
    """zipfile writes data descriptors instead of seeking back when the output cannot seek (a
    pipe); a regular file given with --target is treated alike, so both give the same bytes."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._pos = 0

    def write(self, data: bytes) -> int:
        n = self._out.write(data)
        self._pos += len(data)
        return n or len(data)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        """The output belongs to the caller: closing the zip must not close it."""

    def seekable(self) -> bool:
        return False
