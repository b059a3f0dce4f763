"""The SFTP protocol layer: pipelined requests on paramiko's private request API.

Reads and writes are pipelined by hand on top of paramiko's request layer instead of its
`SFTPFile`: paramiko's pipelined writes drop the server's error replies (a disk-full write would
go unnoticed and the short file be renamed into place) and its prefetch runs in a helper thread
that dies with a traceback when the connection drops.

Every call into paramiko's private API (`_async_request`, `_read_response`, the
`_async_response` callback, `SFTPAttributes._from_msg`) is in this module, which is why
pyproject.toml pins paramiko's major version: an upgrade is checked here. A `Session` needs only
a `paramiko.SFTPClient`, which paramiko builds over an SSH channel or any socket-like object, so
a transport other than paramiko's SSH (the pipes of an `ssh -s sftp` process) can carry it too.
The layers above speak in paths and `Status` codes, never in SFTP request types.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Final

import paramiko
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSTAT,
    CMD_HANDLE,
    CMD_MKDIR,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_REMOVE,
    CMD_RENAME,
    CMD_STAT,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_EOF,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_WRITE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
    int64,
)

from backupfs.errors import BackendError, NotFound

# Request sizes: 32 KiB is what every SFTP server accepts; when the server states larger limits
# (OpenSSH's limits@openssh.com), up to 128 KiB, which halves paramiko's per-request CPU cost.
SAFE_CHUNK = 32768
MAX_CHUNK = 131072
IN_FLIGHT = 4 * 1024 * 1024  # bytes requested but not yet answered, per session

# what a broken stream raises: the session (and usually its connection) is unusable
CONNECTION_ERRORS = (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError)
# status codes the layers above act on
NO_SUCH_FILE: Final = SFTP_NO_SUCH_FILE
END_OF_FILE: Final = SFTP_EOF
UNSUPPORTED: Final = SFTP_OP_UNSUPPORTED
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700


class Status(Exception):
    """A non-OK SFTP status reply: the server answered, so the session is still usable."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


class Replies:
    """Collects replies to our requests; paramiko routes them here by request number."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, Any]] = {}

    def _async_response(self, t: int, msg: Any, num: int) -> None:
        self.got[num] = (t, msg)


def check_reply(t: int, msg: Any, expect: int | None = None) -> Any:
    """Raise Status for an error status; return the message of the expected reply type."""
    if t == CMD_STATUS:
        code = msg.get_int()
        text = msg.get_text()
        if code == SFTP_OK and expect is None:
            return msg
        raise Status(code, text or f"status {code}")
    if expect is not None and t != expect:
        raise Status(-1, f"unexpected SFTP reply type {t}")
    return msg


class Session:
    """One SFTP channel used by one thread at a time, with pipelined requests."""

    def __init__(self, client: Any, read_chunk: int = SAFE_CHUNK, write_chunk: int = SAFE_CHUNK) -> None:
        self.client = client  # paramiko.SFTPClient: only its request layer is used
        self.read_chunk = read_chunk
        self.write_chunk = write_chunk

    def limits(self) -> tuple[int, int]:
        """(read, write) request sizes the server accepts, from limits@openssh.com if offered."""
        try:
            msg = self.request(CMD_EXTENDED, "limits@openssh.com", expect=CMD_EXTENDED_REPLY)
        except Status:
            return SAFE_CHUNK, SAFE_CHUNK
        msg.get_int64()  # max packet length
        read, write = msg.get_int64(), msg.get_int64()
        return (
            min(MAX_CHUNK, read) if read >= SAFE_CHUNK else SAFE_CHUNK,
            min(MAX_CHUNK, write) if write >= SAFE_CHUNK else SAFE_CHUNK,
        )

    def send(self, replies: Replies, t: int, *args: Any) -> int:
        num: int = self.client._async_request(replies, t, *args)
        return num

    def wait(self, replies: Replies, num: int) -> tuple[int, Any]:
        while num not in replies.got:
            self.client._read_response()  # reads one reply and routes it
        return replies.got.pop(num)

    def request(self, t: int, *args: Any, expect: int | None = None) -> Any:
        replies = Replies()
        return check_reply(*self.wait(replies, self.send(replies, t, *args)), expect)

    def batch(self, requests: Iterable[tuple[Any, ...]]) -> list[tuple[int, Any]]:
        """Send many requests before reading any reply: one round trip instead of one each."""
        replies = Replies()
        nums = [self.send(replies, *req) for req in requests]
        return [self.wait(replies, n) for n in nums]

    def _open(self, path: str, flags: int) -> bytes:
        attrs = paramiko.SFTPAttributes()
        if flags & SFTP_FLAG_CREATE:
            attrs.st_mode = _FILE_MODE
        handle: bytes = self.request(CMD_OPEN, path.encode(), flags, attrs, expect=CMD_HANDLE).get_binary()
        return handle

    def open_read(self, path: str) -> bytes:
        return self._open(path, SFTP_FLAG_READ)

    def create(self, path: str) -> bytes:
        """A handle to write a new file (owner-only); Status if `path` exists."""
        return self._open(path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL)

    def fsync(self, handle: bytes) -> None:
        """fsync@openssh.com; Status(UNSUPPORTED) where the server lacks it."""
        self.request(CMD_EXTENDED, "fsync@openssh.com", handle)

    def mkdir(self, path: str) -> None:
        self.request(CMD_MKDIR, path.encode(), _dir_attrs())

    def mkdirs(self, paths: Sequence[str]) -> list[str]:
        """mkdir of each path, pipelined; the paths that failed (usually: they exist)."""
        replies = self.batch((CMD_MKDIR, p.encode(), _dir_attrs()) for p in paths)
        return [p for p, reply in zip(paths, replies, strict=True) if _failed(reply)]

    def remove(self, path: str) -> None:
        self.request(CMD_REMOVE, path.encode())

    def remove_many(self, paths: Sequence[str]) -> int:
        """remove of each path, pipelined; how many were removed."""
        return sum(1 for reply in self.batch((CMD_REMOVE, p.encode()) for p in paths) if not _failed(reply))

    def rename(self, old: str, new: str) -> None:
        """Plain SFTP rename, which never replaces an existing file (OpenSSH: link + unlink)."""
        self.request(CMD_RENAME, old.encode(), new.encode())

    def posix_rename(self, old: str, new: str) -> None:
        """posix-rename@openssh.com, which replaces; Status(UNSUPPORTED) where the server lacks it."""
        self.request(CMD_EXTENDED, "posix-rename@openssh.com", old.encode(), new.encode())

    def close_handle(self, handle: bytes, wait: bool = True) -> None:
        if wait:
            self.request(CMD_CLOSE, handle)
            return
        # The reply is read and dropped by whoever uses the session next. A dead connection
        # has already failed the caller, and the server closes handles when it goes.
        with contextlib.suppress(*CONNECTION_ERRORS):
            self.client._async_request(type(None), CMD_CLOSE, handle)

    def size(self, handle: bytes) -> int:
        attrs = paramiko.SFTPAttributes._from_msg(self.request(CMD_FSTAT, handle, expect=CMD_ATTRS))
        return int(attrs.st_size)

    def stat(self, path: str) -> Any:
        return paramiko.SFTPAttributes._from_msg(self.request(CMD_STAT, path.encode(), expect=CMD_ATTRS))

    def write_all(self, handle: bytes, data: memoryview) -> None:
        replies = Replies()
        pending: deque[int] = deque()
        offset = 0
        chunk = self.write_chunk
        depth = max(4, IN_FLIGHT // chunk)
        while offset < len(data) or pending:
            while offset < len(data) and len(pending) < depth:
                piece = bytes(data[offset : offset + chunk])
                pending.append(self.send(replies, CMD_WRITE, handle, int64(offset), piece))
                offset += len(piece)
            check_reply(*self.wait(replies, pending.popleft()))

    def read_range(self, handle: bytes, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset`; raises Status(SFTP_EOF) if the file is shorter."""
        chunk = self.read_chunk
        if length <= chunk:  # the common small ranged read: one request, no pipeline set-up
            replies = Replies()
            data = self._data(*self.wait(replies, self.send(replies, CMD_READ, handle, int64(offset), length)))
            if len(data) == length:
                return data
            return data + self.read_range(handle, offset + len(data), length - len(data))
        buf = bytearray(length)
        replies = Replies()
        pending: dict[int, tuple[int, int]] = {}
        order: deque[int] = deque()
        todo: deque[tuple[int, int]] = deque()  # pieces the server answered only in part
        pos, end = offset, offset + length
        while pos < end or todo or order:
            while (todo or pos < end) and len(order) < max(4, IN_FLIGHT // chunk):
                if todo:
                    start, size = todo.popleft()
                else:
                    start, size = pos, min(chunk, end - pos)
                    pos += size
                num = self.send(replies, CMD_READ, handle, int64(start), size)
                pending[num] = (start, size)
                order.append(num)
            num = order.popleft()
            start, size = pending.pop(num)
            data = self._data(*self.wait(replies, num))
            buf[start - offset : start - offset + len(data)] = data
            if len(data) < size:
                todo.append((start + len(data), size - len(data)))
        return bytes(buf)

    @staticmethod
    def _data(t: int, msg: Any) -> bytes:
        data: bytes = check_reply(t, msg, CMD_DATA).get_string()
        if not data:
            raise Status(SFTP_EOF, "end of file")
        return data

    def listdirs(self, dirs: Sequence[str]) -> dict[str, list[Any] | Status]:
        """Entries (SFTPAttributes with .filename) of each directory, pipelined across them."""
        out: dict[str, list[Any] | Status] = {}
        opened = self.batch((CMD_OPENDIR, d.encode()) for d in dirs)
        handles: dict[str, bytes] = {}
        for d, reply in zip(dirs, opened, strict=True):
            try:
                handles[d] = check_reply(*reply, CMD_HANDLE).get_binary()
                out[d] = []
            except Status as exc:
                out[d] = exc
        active = dict(handles)
        try:
            while active:
                names = list(active)
                for d, (t, msg) in zip(names, self.batch((CMD_READDIR, active[n]) for n in names), strict=True):
                    if t == CMD_STATUS:
                        try:
                            check_reply(t, msg)
                        except Status as exc:
                            if exc.code != SFTP_EOF:
                                out[d] = exc
                        del active[d]
                        continue
                    entries = check_reply(t, msg, CMD_NAME)
                    target = out[d]
                    assert isinstance(target, list)
                    for _ in range(entries.get_int()):
                        filename = entries.get_text()
                        longname = entries.get_text()
                        target.append(paramiko.SFTPAttributes._from_msg(entries, filename, longname))
        finally:
            for handle in handles.values():
                self.close_handle(handle, wait=False)
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def _dir_attrs() -> Any:
    attrs = paramiko.SFTPAttributes()
    attrs.st_mode = _DIR_MODE
    return attrs


def _failed(reply: tuple[int, Any]) -> bool:
    try:
        check_reply(*reply)
    except Status:
        return True
    return False


def status_error(exc: Status, what: str) -> BackendError:
    """The BackendError a server's refusal means for the operation `what`."""
    if exc.code == SFTP_NO_SUCH_FILE:
        return NotFound(f"{what} not found")
    if exc.code == SFTP_PERMISSION_DENIED:
        return BackendError(f"{what}: permission denied")
    if exc.code == SFTP_OP_UNSUPPORTED:
        return BackendError(f"{what}: operation not supported by the SFTP server")
    # OpenSSH reports ENOSPC, EEXIST, EIO, ... all as a bare "Failure".
    return BackendError(f"{what}: SFTP server error: {exc.message} (disk full, or not writable?)")


def describe(exc: BaseException) -> str:
    """The first line of an error's text, or what an empty one means."""
    if not str(exc).strip() and isinstance(exc, TimeoutError | EOFError):
        return "timed out" if isinstance(exc, TimeoutError) else "the server closed the connection"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


