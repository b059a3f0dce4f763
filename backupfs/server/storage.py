"""The repository directories on the server's disk: uploads, reads, listings and removal.

Everything here blocks, and is called from worker threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import json
import os
from collections.abc import Generator, Iterator
from typing import Final

import blake3

from backupfs.backends import layout
from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.errors import AlreadyExists
from backupfs.server.routes import parse_range

READ_CHUNK: Final = 4 << 20  # most blob reads are one piece: one thread hop


def file_path(repo_dir: str, ftype: FileType, name: str) -> str:
    """Where a (validated) file lives on disk: the local backend's layout (backends/layout.py)."""
    return os.path.join(repo_dir, layout.path(ftype, name))


class Refused(Exception):
    """Ends a request early with a status and a one-line reason."""

    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []



class Upload:
    """A temporary file next to the target, hashed as it is written. Used from worker threads."""

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.tmp = os.path.join(directory, layout.temporary_name(name))
        os.makedirs(directory, exist_ok=True)
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.hasher = blake3.blake3(max_threads=1)
        self.size = 0
        self.done = False

    @classmethod
    def start(cls, repo_dir: str, path: str, name: str, protected: bool) -> Upload | None:
        """A new upload; None if `path` exists and must not be replaced. One thread hop."""
        if not os.path.isdir(repo_dir):
            raise Refused(404, "no repository at this path")
        if protected and os.path.exists(path):
            return None
        return cls(os.path.dirname(path), name)

    def write(self, data: bytes) -> None:
        self.hasher.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)

    def commit(self, path: str, name: str | None, replace: bool) -> bool:
        """fsync, check the content hashes to `name`, move into place, fsync the directory.

        Without `replace` the file is linked (atomic, never replaces: safe against racing
        writers) and False means `path` already existed.
        """
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1
        if name is not None and self.hasher.hexdigest() != name:
            raise Refused(400, f"content does not hash to its name ({self.size} bytes received); not stored")
        try:
            if replace:
                os.replace(self.tmp, path)
            else:
                os.link(self.tmp, path)
                os.unlink(self.tmp)
        except FileExistsError:
            os.unlink(self.tmp)
            return False
        finally:
            self.done = True
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


@dataclasses.dataclass(slots=True)
class Read:
    """The answer to a GET or HEAD: status, headers and the first (often only) piece of data."""

    status: int
    headers: list[tuple[bytes, bytes]]
    first: bytes
    pos: int  # file offset after `first`
    end: int
    fd: int  # still open when more pieces follow, else -1


def open_read(path: str, range_header: bytes | None, head: bool) -> Read:
    """Opens, sizes and reads the first piece in one thread hop: most requests are one piece."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, IsADirectoryError):
        raise Refused(404, "not found") from None
    try:
        size = os.fstat(fd).st_size
        start, end, status = 0, size, 200
        headers = [(b"content-type", b"application/octet-stream"), (b"accept-ranges", b"bytes")]
        if range_header is not None:
            rng = parse_range(range_header, size)
            if rng == "bad":
                raise Refused(400, "malformed Range header")
            if rng is None:
                raise Refused(416, "range not satisfiable", [(b"content-range", f"bytes */{size}".encode())])
            assert isinstance(rng, tuple)
            start, end = rng
            status = 206
            headers.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))
        headers.append((b"content-length", str(end - start).encode()))
        first = b"" if head else pread(fd, min(READ_CHUNK, end - start), start)
        pos = start + len(first)
        if head or pos >= end:
            os.close(fd)
            fd = -1
        return Read(status, headers, first, pos, end, fd)
    except BaseException:
        os.close(fd)
        raise


def pread(fd: int, n: int, pos: int) -> bytes:
    data = os.pread(fd, n, pos)
    if len(data) != n:
        raise OSError(errno.EIO, "file shrank while being read")
    return data


def open_listing(repo_dir: str, ftype: FileType, batch: int) -> Generator[bytes, None, None]:
    """A folder's v2 listing (a JSON array of name and size), in pieces of `batch` entries.

    In pieces, because a folder can be huge: built whole, 200,000 lock files (which even an
    append-only client may create) took 270 MB of the server's memory per listing at once.
    Refused (404) here, before any piece, if there is no repository.
    """
    if not os.path.isdir(repo_dir):
        raise Refused(404, "no repository at this path")
    return _listing_pieces(LocalBackend(repo_dir).list(ftype), batch)


def _listing_pieces(entries: Iterator[tuple[str, int]], batch: int) -> Generator[bytes, None, None]:
    yield b"["
    separator = b""
    while chunk := list(itertools.islice(entries, batch)):
        array = json.dumps([{"name": n, "size": s} for n, s in chunk]).encode()
        yield separator + array[1:-1]  # the entries, without the brackets: one dumps per piece
        separator = b","
    yield b"]"


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise Refused(404, "not found") from None



def create_repository(repo_dir: str) -> None:
    """Creates the layout (idempotent, as restic's protocol asks); an existing repo is untouched."""
    backend = LocalBackend(repo_dir)
    with contextlib.suppress(AlreadyExists):
        backend.create()

