"""The SFTP protocol (version 3 and OpenSSH's extensions): a small client of our own.

It frames packets with `struct`, sends each write request with one `writev` (the data is never
copied), reads replies into one buffer from which DATA goes straight into the caller's buffer,
and keeps many requests in flight. It runs over any byte `Stream`: the pipes of an
`ssh -s sftp` process (openssh.py) or a paramiko SSH channel (connect.py). paramiko's own SFTP
layer costs several times more Python time per packet and, used as it is, drops the server's
replies to pipelined writes (a disk-full write would go unnoticed); docs/backends.md has the
measurements behind writing this one.

A Session is used by one thread at a time. The layers above speak in paths and `Status` codes,
never in request types. Every value read from the server is bounded: a packet longer than
MAX_PACKET, a reply to a request never sent, or DATA longer than asked for is a ProtocolError,
which breaks the session like a dropped connection (the stream's state is unknown).
"""

from __future__ import annotations

import contextlib
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from backupfs.errors import BackendError, NotFound

# Request sizes: 32 KiB is what every SFTP server accepts; when the server states larger limits
# (OpenSSH's limits@openssh.com: 255 KiB), up to MAX_CHUNK.
SAFE_CHUNK: Final = 32768
MAX_CHUNK: Final = 255 * 1024
IN_FLIGHT: Final = 4 * 1024 * 1024  # bytes requested but not yet answered, per session
MAX_PACKET: Final = 1024 * 1024  # longest reply accepted (OpenSSH's sftp-server sends <= 256 KiB)
_BUFFER: Final = 2 * MAX_PACKET  # receive buffer: one whole packet fits whatever the read position
_BURST: Final = 64  # requests sent with one write call (writev takes at most IOV_MAX buffers)
_VERSION: Final = 3

# packet types (draft-ietf-secsh-filexfer-02)
_INIT, _VERSION_REPLY = 1, 2
_OPEN, _CLOSE, _READ, _WRITE, _LSTAT, _FSTAT = 3, 4, 5, 6, 7, 8
_OPENDIR, _READDIR, _REMOVE, _MKDIR, _STAT, _RENAME = 11, 12, 13, 14, 17, 18
_STATUS, _HANDLE, _DATA, _NAME, _ATTRS = 101, 102, 103, 104, 105
_EXTENDED, _EXTENDED_REPLY = 200, 201
# open flags and attribute flags
_READ_FLAG, _WRITE_FLAG, _CREATE_FLAG, _EXCL_FLAG = 0x01, 0x02, 0x08, 0x20
_ATTR_SIZE, _ATTR_UIDGID, _ATTR_PERMISSIONS, _ATTR_ACMODTIME = 0x1, 0x2, 0x4, 0x8
_ATTR_EXTENDED = 0x80000000
# status codes; the layers above act on the first four
OK: Final = 0
END_OF_FILE: Final = 1
NO_SUCH_FILE: Final = 2
PERMISSION_DENIED: Final = 3
UNSUPPORTED: Final = 8
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEAD = struct.Struct(">IBI")  # length, type, request id: the start of every request
_READ_REQ = struct.Struct(">QI")


class ProtocolError(Exception):
    """The server's bytes make no sense as SFTP: the session cannot be used any more."""


# what a broken stream raises: the session (and usually its connection) is unusable
CONNECTION_ERRORS = (OSError, EOFError, ProtocolError)


class Stream(Protocol):
    """A byte stream to an SFTP server, with the carrier's timeout on every wait."""

    def write(self, parts: Sequence[bytes | memoryview]) -> None:
        """Send all of `parts`, in order; OSError (TimeoutError: no progress) on failure."""

    def read_into(self, view: memoryview) -> int:
        """Read at least one byte into `view`; EOFError at the end, TimeoutError if none come."""

    def shutdown(self) -> None:
        """End the stream; safe while another thread reads or writes (it gets EOF or EPIPE)."""

    def close(self) -> None:
        """Release what the stream holds, once no thread uses it any more."""


class Status(Exception):
    """A non-OK SFTP status reply: the server answered, so the session is still usable."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Attrs:
    """A file's attributes as the server gave them; `filename` is set in directory listings."""

    st_size: int | None = None
    st_mode: int | None = None
    st_mtime: int | None = None
    filename: str = ""


class _Cursor:
    """Reads SFTP fields from a reply; running past its end is a ProtocolError."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes | memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError("truncated SFTP reply")
        piece = self.data[self.pos : end]
        self.pos = end
        return piece

    def u32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    def string(self) -> bytes:
        return bytes(self._take(self.u32()))

    def text(self) -> str:
        return self.string().decode("utf-8", "replace")

    def attrs(self, filename: str = "") -> Attrs:
        flags = self.u32()
        size = self.u64() if flags & _ATTR_SIZE else None
        if flags & _ATTR_UIDGID:
            self._take(8)
        mode = self.u32() if flags & _ATTR_PERMISSIONS else None
        mtime = None
        if flags & _ATTR_ACMODTIME:
            self._take(4)  # atime
            mtime = self.u32()
        if flags & _ATTR_EXTENDED:
            for _ in range(self.u32()):  # each pair takes >= 8 bytes: bounded by the packet
                self.string()
                self.string()
        return Attrs(size, mode, mtime, filename)


def _string(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return _U32.pack(len(raw)) + raw


def _mode_attrs(mode: int) -> bytes:
    return _U32.pack(_ATTR_PERMISSIONS) + _U32.pack(mode)


_NO_ATTRS = _U32.pack(0)


class _Reader:
    """Packets from the stream, through one buffer reused for the whole session."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.buf = bytearray(_BUFFER)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0

    def _need(self, n: int) -> None:
        if self.end - self.start >= n:
            return
        if self.start + n > _BUFFER:  # move the partial packet to the front
            size = self.end - self.start
            self.buf[:size] = self.view[self.start : self.end]
            self.start, self.end = 0, size
        while self.end - self.start < n:
            self.end += self.stream.read_into(self.view[self.end :])

    def packet(self) -> tuple[int, int, memoryview]:
        """(type, request id, payload); the payload is valid until the next call.

        VERSION has no request id: its field holds the version number instead."""
        self._need(4)
        length = int(_U32.unpack_from(self.buf, self.start)[0])
        if not 5 <= length <= MAX_PACKET:
            raise ProtocolError(f"an SFTP packet of {length} bytes")
        self._need(4 + length)
        start = self.start
        kind = self.buf[start + 4]
        rid = int(_U32.unpack_from(self.buf, start + 5)[0])
        self.start = start + 4 + length
        return kind, rid, self.view[start + 9 : self.start]


class _Call:
    """The requests of one call (a read, a batch) and their replies, filled in by the reader.

    A READ's DATA goes straight into the caller's buffer (`sinks`), everything else is kept as
    (type, payload)."""

    def __init__(self, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)
        self.done: dict[int, tuple[int, bytes]] = {}
        self.sinks: dict[int, tuple[bytearray, int, int]] = {}  # id -> (buffer, position, size)

    def deliver(self, rid: int, kind: int, payload: memoryview) -> None:
        sink = self.sinks.pop(rid, None)
        if sink is not None and kind == _DATA:
            buf, at, size = sink
            n = int(_U32.unpack_from(payload)[0]) if len(payload) >= 4 else -1
            if not 0 <= n <= size or n != len(payload) - 4:
                raise ProtocolError(f"a DATA reply of {len(payload)} bytes to a read of {size}")
            buf[at : at + n] = payload[4:]
            self.done[rid] = (kind, _U32.pack(n))
        else:
            self.done[rid] = (kind, bytes(payload))
        self.cond.notify()


_DROP: Final = None  # in Session._expect: nobody waits for this reply any more


class Session:
    """One SFTP session over a stream, shared by any number of threads.

    Each thread's requests are written whole under a lock; one reader thread reads every reply
    and hands it to the call that sent the request, so the requests of many threads are in
    flight at once on one stream. The reader also keeps time: when requests are outstanding and
    nothing arrives for `timeout` seconds, the session is broken and every waiting call fails
    with TimeoutError. Once broken (end of stream, timeout, nonsense from the server) it stays
    broken: every call raises what broke it.
    """

    def __init__(self, stream: Stream, timeout: float) -> None:
        self.stream = stream
        self.timeout = timeout
        self.read_chunk = SAFE_CHUNK
        self.write_chunk = SAFE_CHUNK
        self.extensions: dict[str, bytes] = {}
        self.users = 0  # threads using it now (the pool's count, kept under the pool's lock)
        self._reader = _Reader(stream)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._next_id = 0
        self._expect: dict[int, _Call | None] = {}  # sent and not yet answered
        self._waiting_since = 0.0  # when the reader last got a packet, or the first request after none
        self._broken: BaseException | None = None
        self._waiting: set[_Call] = set()  # calls waiting for a reply: woken if the session breaks
        self._closing = False
        self._thread: threading.Thread | None = None

    # --- the stream ---

    def handshake(self) -> None:
        """INIT -> VERSION (the server's extensions go to `extensions`); then starts the reader."""
        self.stream.write([_U32.pack(5) + bytes([_INIT]) + _U32.pack(_VERSION)])
        kind, version, payload = self._reader.packet()
        if kind != _VERSION_REPLY:
            raise ProtocolError(f"the server sent packet type {kind} instead of its SFTP version")
        if version < _VERSION:
            raise ProtocolError(f"the server speaks SFTP version {version}; version 3 is needed")
        fields = _Cursor(payload)
        while fields.pos < len(payload):
            name = fields.text()
            self.extensions[name] = fields.string()
        self._thread = threading.Thread(target=self._read_loop, name="bfs-sftp-reader", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        try:
            while True:
                try:
                    kind, rid, payload = self._reader.packet()
                except TimeoutError:
                    with self._lock:
                        if not self._expect or time.monotonic() - self._waiting_since < self.timeout:
                            continue  # idle, or a request sent during the wait: keep waiting
                    raise
                with self._lock:
                    self._waiting_since = time.monotonic()
                    if rid not in self._expect:
                        raise ProtocolError(f"a reply to request {rid}, which was never sent or already answered")
                    call = self._expect.pop(rid)
                    if call is not None:
                        call.deliver(rid, kind, payload)
        except BaseException as exc:
            self._break(exc)

    def _break(self, exc: BaseException) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = EOFError("the SFTP session was closed") if self._closing else exc
            for call in self._waiting:
                call.cond.notify_all()

    def _raise_broken(self) -> None:
        """Raise (a copy of) what broke the session; called with the lock held."""
        exc = self._broken
        assert exc is not None
        if isinstance(exc, CONNECTION_ERRORS):
            raise type(exc)(*exc.args)
        raise EOFError(f"the SFTP session failed: {describe(exc)}")

    @property
    def broken(self) -> bool:
        return self._broken is not None

    def _register(self, call: _Call | None) -> int:
        """A new request id whose reply goes to `call` (None: thrown away); lock held."""
        if self._broken is not None:
            self._raise_broken()
        rid = self._next_id
        self._next_id = (rid + 1) & 0xFFFFFFFF
        if rid in self._expect:  # 4 billion requests later, one still unanswered
            raise ProtocolError("request ids wrapped around onto an unanswered request")
        if not self._expect:
            self._waiting_since = time.monotonic()
        self._expect[rid] = call
        return rid

    def _write(self, parts: list[bytes | memoryview]) -> None:
        try:
            with self._send_lock:
                self.stream.write(parts)
        except BaseException as exc:
            # A partial packet may be in the stream: nothing can follow it. (The reader learns
            # of it from the end of the stream once the carrier stops the process.)
            self._break(exc)
            raise

    def _send(self, call: _Call | None, kind: int, body: bytes) -> int:
        with self._lock:
            rid = self._register(call)
        self._write([_HEAD.pack(5 + len(body), kind, rid) + body])
        return rid

    def _wait(self, call: _Call, rid: int | None = None) -> tuple[int, int, bytes]:
        """The reply to `rid` (or to any of the call's requests): (id, type, payload)."""
        with self._lock:
            while True:
                if rid is None and call.done:
                    got = next(iter(call.done))
                    return (got, *call.done.pop(got))
                if rid is not None and rid in call.done:
                    return (rid, *call.done.pop(rid))
                if self._broken is not None:
                    self._raise_broken()
                self._waiting.add(call)
                try:
                    call.cond.wait()
                finally:
                    self._waiting.discard(call)

    def _abandon(self, call: _Call, rids: Iterable[int]) -> None:
        """The call gave up on these requests (an error reply to another): drop their replies."""
        with self._lock:
            for rid in rids:
                if self._expect.get(rid) is call:
                    self._expect[rid] = _DROP
                call.done.pop(rid, None)
                call.sinks.pop(rid, None)

    def request(self, kind: int, body: bytes, expect: int | None = None) -> _Cursor:
        call = _Call(self._lock)
        _rid, got_kind, payload = self._wait(call, self._send(call, kind, body))
        return check_reply(got_kind, payload, expect)

    def batch(self, requests: Iterable[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """Send many requests before reading any reply: one round trip instead of one each."""
        call = _Call(self._lock)
        rids: list[int] = []
        packets: list[bytes | memoryview] = []
        for kind, body in requests:
            with self._lock:
                rid = self._register(call)
            rids.append(rid)
            packets.append(_HEAD.pack(5 + len(body), kind, rid) + body)
            if len(packets) == _BURST:
                self._write(packets)
                packets = []
        if packets:
            self._write(packets)
        return [self._wait(call, rid)[1:] for rid in rids]

    # --- requests ---

    def limits(self) -> tuple[int, int]:
        """(read, write) request sizes the server accepts, from limits@openssh.com if offered."""
        if "limits@openssh.com" not in self.extensions:
            return SAFE_CHUNK, SAFE_CHUNK
        try:
            reply = self.request(_EXTENDED, _string("limits@openssh.com"), _EXTENDED_REPLY)
        except Status:
            return SAFE_CHUNK, SAFE_CHUNK
        reply.u64()  # max packet length
        read, write = reply.u64(), reply.u64()
        return (
            min(MAX_CHUNK, read) if read >= SAFE_CHUNK else SAFE_CHUNK,
            min(MAX_CHUNK, write) if write >= SAFE_CHUNK else SAFE_CHUNK,
        )

    def _open(self, path: str, flags: int) -> bytes:
        attrs = _mode_attrs(_FILE_MODE) if flags & _CREATE_FLAG else _NO_ATTRS
        return self.request(_OPEN, _string(path) + _U32.pack(flags) + attrs, _HANDLE).string()

    def open_read(self, path: str) -> bytes:
        return self._open(path, _READ_FLAG)

    def create(self, path: str) -> bytes:
        """A handle to write a new file (owner-only); Status if `path` exists."""
        return self._open(path, _WRITE_FLAG | _CREATE_FLAG | _EXCL_FLAG)

    def fsync(self, handle: bytes) -> None:
        """fsync@openssh.com; Status(UNSUPPORTED) where the server lacks it."""
        self.request(_EXTENDED, _string("fsync@openssh.com") + _string(handle))

    def mkdir(self, path: str) -> None:
        self.request(_MKDIR, _string(path) + _mode_attrs(_DIR_MODE))

    def mkdirs(self, paths: Sequence[str]) -> list[str]:
        """mkdir of each path, pipelined; the paths that failed (usually: they exist)."""
        replies = self.batch((_MKDIR, _string(p) + _mode_attrs(_DIR_MODE)) for p in paths)
        return [p for p, reply in zip(paths, replies, strict=True) if _failed(reply)]

    def remove(self, path: str) -> None:
        self.request(_REMOVE, _string(path))

    def remove_many(self, paths: Sequence[str]) -> int:
        """remove of each path, pipelined; how many were removed."""
        return sum(1 for reply in self.batch((_REMOVE, _string(p)) for p in paths) if not _failed(reply))

    def rename(self, old: str, new: str) -> None:
        """Plain SFTP rename, which never replaces an existing file (OpenSSH: link + unlink)."""
        self.request(_RENAME, _string(old) + _string(new))

    def posix_rename(self, old: str, new: str) -> None:
        """posix-rename@openssh.com, which replaces; Status(UNSUPPORTED) where the server lacks it."""
        self.request(_EXTENDED, _string("posix-rename@openssh.com") + _string(old) + _string(new))

    def close_handle(self, handle: bytes, wait: bool = True) -> None:
        if wait:
            self.request(_CLOSE, _string(handle))
            return
        # Nobody waits for the reply. A broken session has already failed the caller, and the
        # server closes handles when the session ends.
        with contextlib.suppress(*CONNECTION_ERRORS):
            self._send(_DROP, _CLOSE, _string(handle))

    def size(self, handle: bytes) -> int:
        size = self.request(_FSTAT, _string(handle), _ATTRS).attrs().st_size
        if size is None:
            raise ProtocolError("the server did not say how large an open file is")
        return size

    def stat(self, path: str) -> Attrs:
        return self.request(_STAT, _string(path), _ATTRS).attrs()

    def write_all(self, handle: bytes, data: memoryview) -> None:
        call = _Call(self._lock)
        prefix = _string(handle)
        pending: deque[int] = deque()
        offset = 0
        chunk = self.write_chunk
        depth = max(4, IN_FLIGHT // chunk)
        try:
            while offset < len(data) or pending:
                parts: list[bytes | memoryview] = []
                while offset < len(data) and len(pending) < depth and len(parts) < 2 * _BURST:
                    piece = data[offset : offset + chunk]
                    body = prefix + _U64.pack(offset) + _U32.pack(len(piece))
                    with self._lock:
                        rid = self._register(call)
                    parts += [_HEAD.pack(5 + len(body) + len(piece), _WRITE, rid) + body, piece]
                    pending.append(rid)
                    offset += len(piece)
                if parts:
                    self._write(parts)
                _rid, kind, payload = self._wait(call, pending.popleft())
                check_reply(kind, payload)
        except Status:
            self._abandon(call, pending)
            raise

    def read_range(self, handle: bytes, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset`; raises Status(END_OF_FILE) if the file is shorter."""
        buf = bytearray(length)
        call = _Call(self._lock)
        handle_field = _string(handle)
        size_field = 5 + len(handle_field) + _READ_REQ.size
        pending: dict[int, tuple[int, int]] = {}  # request id -> (file offset, size)
        todo: deque[tuple[int, int]] = deque()  # pieces the server answered only in part
        pos, end = offset, offset + length
        chunk = self.read_chunk
        depth = max(4, IN_FLIGHT // chunk)
        try:
            while pos < end or todo or pending:
                packets: list[bytes | memoryview] = []
                while (todo or pos < end) and len(pending) < depth:
                    if todo:
                        start, size = todo.popleft()
                    else:
                        start, size = pos, min(chunk, end - pos)
                        pos += size
                    with self._lock:
                        rid = self._register(call)
                        call.sinks[rid] = (buf, start - offset, size)
                    packets.append(_HEAD.pack(size_field, _READ, rid) + handle_field + _READ_REQ.pack(start, size))
                    pending[rid] = (start, size)
                if packets:
                    self._write(packets)
                rid, kind, payload = self._wait(call)
                start, size = pending.pop(rid)
                if kind != _DATA:
                    check_reply(kind, payload, _DATA)
                n = int(_U32.unpack(payload)[0])
                if n == 0:
                    raise Status(END_OF_FILE, "end of file")
                if n < size:
                    todo.append((start + n, size - n))
        except Status:
            self._abandon(call, pending)
            raise
        return bytes(buf)

    def listdirs(self, dirs: Sequence[str]) -> dict[str, list[Attrs] | Status]:
        """Entries of each directory (with `filename`), pipelined across them."""
        out: dict[str, list[Attrs] | Status] = {}
        handles: dict[str, bytes] = {}
        for d, reply in zip(dirs, self.batch((_OPENDIR, _string(d)) for d in dirs), strict=True):
            try:
                handles[d] = check_reply(*reply, _HANDLE).string()
                out[d] = []
            except Status as exc:
                out[d] = exc
        active = dict(handles)
        try:
            while active:
                names = list(active)
                replies = self.batch((_READDIR, _string(active[n])) for n in names)
                for d, (kind, payload) in zip(names, replies, strict=True):
                    if kind == _STATUS:
                        try:
                            check_reply(kind, payload)
                        except Status as exc:
                            if exc.code != END_OF_FILE:
                                out[d] = exc
                        del active[d]
                        continue
                    entries = check_reply(kind, payload, _NAME)
                    target = out[d]
                    assert isinstance(target, list)
                    for _ in range(entries.u32()):  # each entry takes >= 12 bytes: bounded
                        filename = entries.text()
                        entries.string()  # the long name, as `ls -l` prints it
                        target.append(entries.attrs(filename))
        finally:
            for handle in handles.values():
                self.close_handle(handle, wait=False)
        return out

    def shutdown(self) -> None:
        """End the stream: the reader thread sees its end and exits, calls fail. Thread-safe."""
        with self._lock:
            self._closing = True
        self.stream.shutdown()

    def close(self) -> None:
        """shutdown(), and release the stream once the reader has left it."""
        self.shutdown()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.timeout)
            if self._thread.is_alive():
                return  # still inside the stream: better to leave its resources to the GC
        self.stream.close()


def check_reply(kind: int, payload: bytes, expect: int | None = None) -> _Cursor:
    """Raise Status for an error status; a cursor over the expected reply's fields."""
    fields = _Cursor(payload)
    if kind == _STATUS:
        code = fields.u32()
        if code == OK and expect is None:
            return fields
        try:
            text = fields.text()
        except ProtocolError:
            text = ""  # SFTP v3 servers may omit the message
        raise Status(code, text or f"status {code}")
    if expect is not None and kind != expect:
        raise ProtocolError(f"reply type {kind} where {expect} was due")
    return fields


def _failed(reply: tuple[int, bytes]) -> bool:
    try:
        check_reply(*reply)
    except Status:
        return True
    return False


def status_error(exc: Status, what: str) -> BackendError:
    """The BackendError a server's refusal means for the operation `what`."""
    if exc.code == NO_SUCH_FILE:
        return NotFound(f"{what} not found")
    if exc.code == PERMISSION_DENIED:
        return BackendError(f"{what}: permission denied")
    if exc.code == UNSUPPORTED:
        return BackendError(f"{what}: operation not supported by the SFTP server")
    # OpenSSH reports ENOSPC, EEXIST, EIO, ... all as a bare "Failure".
    return BackendError(f"{what}: SFTP server error: {exc.message} (disk full, or not writable?)")


def describe(exc: BaseException) -> str:
    """The first line of an error's text, or what an empty one means."""
    if not str(exc).strip() and isinstance(exc, TimeoutError | EOFError):
        return "timed out" if isinstance(exc, TimeoutError) else "the server closed the connection"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
