"""A repository on an SSH server, over SFTP (paramiko), with the same layout as a local one.

One SSH connection carries a small pool of SFTP sessions (channels), so several threads have
requests in flight at once. Reads and writes are pipelined by hand on top of paramiko's request
layer instead of its `SFTPFile`: paramiko's pipelined writes drop the server's error replies (a
disk-full write would go unnoticed and the short file be renamed into place) and its prefetch
runs in a helper thread that dies with a traceback when the connection drops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import secrets
import stat as stat_mod
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

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

from backupfs.backends.base import FileType
from backupfs.errors import AlreadyExists, BackendError, NotFound, TransientBackendError

log = logging.getLogger(__name__)
# paramiko logs a dropped connection ("Socket exception: Connection reset by peer", sometimes
# with a traceback) from its transport thread; every such failure already reaches the caller as
# a TransientBackendError. Without a handler of its own, Python's last-resort handler would print
# those records to a CLI user's stderr next to our one-line error; a NullHandler stops that, and
# logging an application sets up (mount's) still receives them.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

_TMP_MARK = ".tmp-"
# 32 KiB is the largest request every SFTP server accepts; OpenSSH takes more, but measured
# throughput is limited by paramiko's per-packet cost, not by the request count.
# Request sizes: 32 KiB is what every SFTP server accepts; when the server states larger limits
# (OpenSSH's limits@openssh.com), up to 128 KiB, which halves paramiko's per-request CPU cost.
_SAFE_CHUNK = 32768
_MAX_CHUNK = 131072
_IN_FLIGHT = 4 * 1024 * 1024  # bytes requested but not yet answered, per session
_WINDOW = 8 * 1024 * 1024  # SSH channel receive window: larger than what is in flight
_PACKET = _MAX_CHUNK + 1024  # largest SSH packet we accept: a whole read reply
# AES-GCM costs paramiko less CPU than its default AES-CTR + HMAC (measured ~1.3x throughput).
_PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_DIR_BATCH = 256  # directories listed at once (each holds a server-side handle meanwhile)


_CONNECTION_ERRORS = (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError)


class _Status(Exception):
    """A non-OK SFTP status reply: the server answered, so the session is still usable."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


class _Replies:
    """Collects replies to our requests; paramiko routes them here by request number."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, Any]] = {}

    def _async_response(self, t: int, msg: Any, num: int) -> None:
        self.got[num] = (t, msg)


def _check(t: int, msg: Any, expect: int | None = None) -> Any:
    """Raise _Status for an error status; return the message of the expected reply type."""
    if t == CMD_STATUS:
        code = msg.get_int()
        text = msg.get_text()
        if code == SFTP_OK and expect is None:
            return msg
        raise _Status(code, text or f"status {code}")
    if expect is not None and t != expect:
        raise _Status(-1, f"unexpected SFTP reply type {t}")
    return msg


class _Session:
    """One SFTP channel used by one thread at a time, with pipelined requests."""

    def __init__(self, client: Any, read_chunk: int = _SAFE_CHUNK, write_chunk: int = _SAFE_CHUNK) -> None:
        self.client = client  # paramiko.SFTPClient: only its request layer is used
        self.read_chunk = read_chunk
        self.write_chunk = write_chunk

    def limits(self) -> tuple[int, int]:
        """(read, write) request sizes the server accepts, from limits@openssh.com if offered."""
        try:
            msg = self.request(CMD_EXTENDED, "limits@openssh.com", expect=CMD_EXTENDED_REPLY)
        except _Status:
            return _SAFE_CHUNK, _SAFE_CHUNK
        msg.get_int64()  # max packet length
        read, write = msg.get_int64(), msg.get_int64()
        return (
            min(_MAX_CHUNK, read) if read >= _SAFE_CHUNK else _SAFE_CHUNK,
            min(_MAX_CHUNK, write) if write >= _SAFE_CHUNK else _SAFE_CHUNK,
        )

    def send(self, replies: _Replies, t: int, *args: Any) -> int:
        num: int = self.client._async_request(replies, t, *args)
        return num

    def wait(self, replies: _Replies, num: int) -> tuple[int, Any]:
        while num not in replies.got:
            self.client._read_response()  # reads one reply and routes it
        return replies.got.pop(num)

    def request(self, t: int, *args: Any, expect: int | None = None) -> Any:
        replies = _Replies()
        return _check(*self.wait(replies, self.send(replies, t, *args)), expect)

    def batch(self, requests: Iterable[tuple[Any, ...]]) -> list[tuple[int, Any]]:
        """Send many requests before reading any reply: one round trip instead of one each."""
        replies = _Replies()
        nums = [self.send(replies, *req) for req in requests]
        return [self.wait(replies, n) for n in nums]

    def open(self, path: str, flags: int) -> bytes:
        attrs = paramiko.SFTPAttributes()
        if flags & SFTP_FLAG_CREATE:
            attrs.st_mode = 0o600
        handle: bytes = self.request(CMD_OPEN, path.encode(), flags, attrs, expect=CMD_HANDLE).get_binary()
        return handle

    def close_handle(self, handle: bytes, wait: bool = True) -> None:
        if wait:
            self.request(CMD_CLOSE, handle)
            return
        # The reply is read and dropped by whoever uses the session next. A dead connection
        # has already failed the caller, and the server closes handles when it goes.
        with contextlib.suppress(*_CONNECTION_ERRORS):
            self.client._async_request(type(None), CMD_CLOSE, handle)

    def size(self, handle: bytes) -> int:
        attrs = paramiko.SFTPAttributes._from_msg(self.request(CMD_FSTAT, handle, expect=CMD_ATTRS))
        return int(attrs.st_size)

    def stat(self, path: str) -> Any:
        return paramiko.SFTPAttributes._from_msg(self.request(CMD_STAT, path.encode(), expect=CMD_ATTRS))

    def write_all(self, handle: bytes, data: memoryview) -> None:
        replies = _Replies()
        pending: deque[int] = deque()
        offset = 0
        chunk = self.write_chunk
        depth = max(4, _IN_FLIGHT // chunk)
        while offset < len(data) or pending:
            while offset < len(data) and len(pending) < depth:
                piece = bytes(data[offset : offset + chunk])
                pending.append(self.send(replies, CMD_WRITE, handle, int64(offset), piece))
                offset += len(piece)
            _check(*self.wait(replies, pending.popleft()))

    def read_range(self, handle: bytes, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset`; raises _Status(SFTP_EOF) if the file is shorter."""
        chunk = self.read_chunk
        if length <= chunk:  # the common small ranged read: one request, no pipeline set-up
            replies = _Replies()
            data = self._data(*self.wait(replies, self.send(replies, CMD_READ, handle, int64(offset), length)))
            if len(data) == length:
                return data
            return data + self.read_range(handle, offset + len(data), length - len(data))
        buf = bytearray(length)
        replies = _Replies()
        pending: dict[int, tuple[int, int]] = {}
        order: deque[int] = deque()
        todo: deque[tuple[int, int]] = deque()  # pieces the server answered only in part
        pos, end = offset, offset + length
        while pos < end or todo or order:
            while (todo or pos < end) and len(order) < max(4, _IN_FLIGHT // chunk):
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
        data: bytes = _check(t, msg, CMD_DATA).get_string()
        if not data:
            raise _Status(SFTP_EOF, "end of file")
        return data

    def listdirs(self, dirs: Sequence[str]) -> dict[str, list[Any] | _Status]:
        """Entries (SFTPAttributes with .filename) of each directory, pipelined across them."""
        out: dict[str, list[Any] | _Status] = {}
        opened = self.batch((CMD_OPENDIR, d.encode()) for d in dirs)
        handles: dict[str, bytes] = {}
        for d, reply in zip(dirs, opened, strict=True):
            try:
                handles[d] = _check(*reply, CMD_HANDLE).get_binary()
                out[d] = []
            except _Status as exc:
                out[d] = exc
        active = dict(handles)
        try:
            while active:
                names = list(active)
                for d, (t, msg) in zip(names, self.batch((CMD_READDIR, active[n]) for n in names), strict=True):
                    if t == CMD_STATUS:
                        try:
                            _check(t, msg)
                        except _Status as exc:
                            if exc.code != SFTP_EOF:
                                out[d] = exc
                        del active[d]
                        continue
                    entries = _check(t, msg, CMD_NAME)
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


class _Connection:
    """One SSH transport and a pool of SFTP sessions over it."""

    def __init__(self, ssh: Any, size: int, timeout: float) -> None:
        self.ssh = ssh
        self.transport = ssh.get_transport()
        self.timeout = timeout
        self.broken = False
        self.chunks: tuple[int, int] | None = None  # (read, write) request sizes, probed once
        self._limit = size
        self._open = 0
        self._idle: list[_Session] = []
        self._cond = threading.Condition()

    def alive(self) -> bool:
        return not self.broken and bool(self.transport.is_active())

    def acquire(self) -> _Session:
        deadline = time.monotonic() + self.timeout
        while True:
            with self._cond:
                while True:
                    if not self.alive():
                        raise TransientBackendError("SFTP connection lost")
                    if self._idle:
                        return self._idle.pop()
                    if self._open < self._limit:
                        self._open += 1  # counts sessions open or being opened
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TransientBackendError("timed out waiting for a free SFTP session")
                    self._cond.wait(left)
            try:
                return self._new_session()
            except paramiko.SSHException:
                if not self.transport.is_active():
                    with self._cond:
                        self._open -= 1
                        self._cond.notify()
                    raise
                # The connection is fine, so the server refused the channel. (paramiko does not
                # always say so: concurrent opens can swap their ChannelExceptions.)
                with self._cond:
                    self._open -= 1
                    self._cond.notify_all()
                    if self._open == 0:
                        raise paramiko.ChannelException(1, "the server refused every SFTP session") from None
                    # The server caps sessions per connection (OpenSSH MaxSessions): use the
                    # ones it granted, and wait for one of them.
                    self._limit = self._open
                    limit = self._limit
                log.info("the SFTP server allows at most %d sessions per connection", limit)
            except BaseException:
                with self._cond:
                    self._open -= 1
                    self._cond.notify()
                raise

    def _new_session(self) -> _Session:
        client = paramiko.SFTPClient.from_transport(self.transport, window_size=_WINDOW, max_packet_size=_PACKET)
        if client is None:
            raise paramiko.SSHException("the server refused an SFTP session")
        session = _Session(client)
        try:
            client.get_channel().settimeout(self.timeout)
            if self.chunks is None:
                self.chunks = session.limits()
        except BaseException:
            session.close()
            raise
        session.read_chunk, session.write_chunk = self.chunks
        return session

    def release(self, session: _Session, healthy: bool) -> None:
        keep = False
        with self._cond:
            if healthy and self.alive():
                self._idle.append(session)
                keep = True
            else:
                self._open -= 1
            self._cond.notify()
        if not keep:
            session.close()

    def close(self) -> None:
        self.broken = True
        with self._cond:
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for session in idle:
            session.close()
        with contextlib.suppress(Exception):
            self.ssh.close()


class _AcceptUnknownHost(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """sftp_strict_host_keys=False: accept a host missing from known_hosts (a changed key is
    still rejected), with a log line instead of paramiko's warnings.warn."""

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        log.warning("not verifying the %s host key of %s (not in known_hosts)", key.get_name(), hostname)


class _UnknownHost(paramiko.SSHException):  # type: ignore[misc]
    pass


class _RejectUnknownHost(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise _UnknownHost(hostname)


def ssh_config_for(host: str, path: str | None = None) -> dict[str, Any]:
    """The ~/.ssh/config settings OpenSSH would use for `host` (alias, user, port, identity)."""
    path = path or os.path.expanduser("~/.ssh/config")
    if not os.path.exists(path):
        return {}
    try:
        found: dict[str, Any] = dict(paramiko.SSHConfig.from_path(path).lookup(host))
        return found
    except Exception as exc:  # an unsupported directive must not make the repository unusable
        log.warning("ignoring %s: %s", path, exc)
        return {}


class SFTPBackend:
    """Repository files under `path` on an SSH server: config, keys/, data/xx/, index/, ...

    `path` may be absolute or relative to the login directory. Connects lazily and reconnects
    after a connection failure (the failed call raises TransientBackendError; the retry
    wrapper repeats it).
    """

    def __init__(
        self,
        host: str,
        path: str,
        *,
        user: str | None = None,
        port: int = 22,
        key_filename: str | None = None,
        known_hosts: str | None = None,
        strict_host_keys: bool = True,
        connections: int = 8,
        timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user or _default_user()
        self.path = path.rstrip("/") or ("/" if path.startswith("/") else "")
        self.key_filename = key_filename
        self.known_hosts = known_hosts
        self.strict_host_keys = strict_host_keys
        self.connections = max(1, connections)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._connect_error: tuple[float, BackendError] | None = None  # when and how the latest attempt failed
        self._closed = False
        self._fsync = True  # fsync@openssh.com; cleared when the server says it is unsupported
        self._posix_rename = True  # posix-rename@openssh.com, likewise

    @property
    def location(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"sftp://{self.user}@{host}:{self.port}/{self.path}"

    # --- connection management ---

    def _connect(self) -> _Connection:
        where = f"{self.user}@{self.host}:{self.port}"
        if self.key_filename and not os.path.exists(self.key_filename):
            raise BackendError(f"SFTP identity file {self.key_filename} does not exist")
        ssh = paramiko.SSHClient()
        started = time.monotonic()
        try:
            if self.known_hosts:
                if not os.path.exists(self.known_hosts):
                    raise BackendError(f"known-hosts file {self.known_hosts} does not exist")
                ssh.load_host_keys(self.known_hosts)
            else:
                ssh.load_system_host_keys()  # ~/.ssh/known_hosts
            ssh.set_missing_host_key_policy(_RejectUnknownHost() if self.strict_host_keys else _AcceptUnknownHost())
            ssh.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=self.key_filename,
                look_for_keys=self.key_filename is None,
                allow_agent=True,
                timeout=self.timeout,
                banner_timeout=self.timeout,
                auth_timeout=self.timeout,
                channel_timeout=self.timeout,
                transport_factory=_transport,
            )
            ssh.get_transport().set_keepalive(15)
        except BaseException as exc:
            ssh.close()
            if isinstance(exc, BackendError | KeyboardInterrupt | SystemExit):
                raise
            timed_out = time.monotonic() - started >= 0.9 * self.timeout
            raise _connect_error(exc, where, self.known_hosts, timed_out) from exc
        return _Connection(ssh, self.connections, self.timeout)

    def _connection(self) -> _Connection:
        if self._closed:
            raise BackendError(f"{self.location}: backend is closed")
        waiting_since = time.monotonic()
        with self._lock:  # one thread reconnects; the others wait for it rather than pile on
            conn = self._conn
            if conn is not None and conn.alive():
                return conn
            if self._connect_error is not None and self._connect_error[0] >= waiting_since:
                # Another thread's attempt failed while this one waited for it: that is the
                # answer here too. Trying again at once would make every waiting thread sit
                # through a timeout of its own, one after the other, against a silent server.
                failed = self._connect_error[1]
                raise type(failed)(*failed.args)
            if conn is not None:
                conn.close()
                self._conn = None
            try:
                self._conn = self._connect()
            except BackendError as exc:
                self._connect_error = (time.monotonic(), exc)
                raise
            self._connect_error = None
            return self._conn

    @contextlib.contextmanager
    def _session(self, what: str) -> Iterator[_Session]:
        """Lend a session; turn connection failures into TransientBackendError.

        _Status (the server's answer to a request) passes through untouched: the caller knows
        what a missing file means for its operation.
        """
        conn = self._connection()
        try:
            session = conn.acquire()
        except paramiko.ChannelException as exc:  # the connection itself is fine
            raise TransientBackendError(f"{what}: {self.host} refused an SFTP session: {_describe(exc)}") from exc
        except _CONNECTION_ERRORS as exc:
            conn.close()
            raise TransientBackendError(f"{what}: connection to {self.host} failed: {_describe(exc)}") from exc
        healthy = False
        try:
            yield session
            healthy = True
        except _Status:
            healthy = True
            raise
        except BackendError:
            healthy = True
            raise
        except _CONNECTION_ERRORS as exc:  # includes socket timeouts: the stream state is unknown
            conn.close()
            raise TransientBackendError(f"{what}: connection to {self.host} failed: {_describe(exc)}") from exc
        finally:
            conn.release(session, healthy)

    # --- paths ---

    def _join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts) if self.path else posixpath.join(*parts)

    def _dir(self, ftype: FileType, name: str) -> str:
        if ftype is FileType.CONFIG:
            return self.path or "."
        if ftype is FileType.DATA:
            return self._join(ftype.value, name[:2])
        return self._join(ftype.value)

    def _file(self, ftype: FileType, name: str) -> str:
        if ftype is FileType.CONFIG:
            return self._join("config")
        if not name or "/" in name or name.startswith("."):
            raise BackendError(f"invalid file name {name!r}")
        return posixpath.join(self._dir(ftype, name), name)

    @staticmethod
    def _what(ftype: FileType, name: str) -> str:
        return "config" if ftype is FileType.CONFIG else f"{ftype.value}/{name}"

    # --- Backend protocol ---

    def exists(self) -> bool:
        try:
            self.stat(FileType.CONFIG, "config")
        except NotFound:
            return False
        return True

    def create(self) -> None:
        if self.exists():
            raise AlreadyExists(f"a repository already exists at {self.location}")
        dirs = [self._join(t.value) for t in FileType if t is not FileType.CONFIG]
        dirs += [self._join("data", f"{i:02x}") for i in range(256)]
        with self._session(f"create {self.location}") as s:
            if self.path:
                self._makedirs(s, self.path)
            failed = [
                d
                for d, reply in zip(dirs, s.batch((CMD_MKDIR, d.encode(), _dir_attrs()) for d in dirs), strict=True)
                if _failed(reply)
            ]
            for d in failed:  # usually "already exists"; anything else shows up in the stat
                try:
                    if not stat_mod.S_ISDIR(s.stat(d).st_mode or 0):
                        raise BackendError(f"cannot create {d}: a file is in the way")
                except _Status as exc:
                    raise _status_error(exc, f"cannot create directory {d}") from exc

    def _makedirs(self, s: _Session, path: str) -> None:
        """mkdir -p: try the full path first, walk up only when a parent is missing."""
        try:
            if stat_mod.S_ISDIR(s.stat(path).st_mode or 0):
                return
            raise BackendError(f"{path} exists and is not a directory")
        except _Status as exc:
            if exc.code != SFTP_NO_SUCH_FILE:
                raise _status_error(exc, f"cannot access {path}") from exc
        parent = posixpath.dirname(path)
        if parent and parent not in (path, "/", "."):
            self._makedirs(s, parent)
        try:
            s.request(CMD_MKDIR, path.encode(), _dir_attrs())
        except _Status as exc:
            try:  # lost a race with another writer?
                if stat_mod.S_ISDIR(s.stat(path).st_mode or 0):
                    return
            except _Status:
                pass
            raise _status_error(exc, f"cannot create directory {path}") from exc

    def save(self, ftype: FileType, name: str, data: bytes | memoryview) -> None:
        path = self._file(ftype, name)
        directory = posixpath.dirname(path) or "."
        tmp = posixpath.join(directory, f".{posixpath.basename(path)}{_TMP_MARK}{secrets.token_hex(8)}")
        what = self._what(ftype, name)
        view = memoryview(data).cast("B")
        with self._session(f"save {what}") as s:
            flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL
            try:
                try:
                    handle = s.open(tmp, flags)
                except _Status as exc:
                    if exc.code != SFTP_NO_SUCH_FILE:
                        raise
                    self._makedirs(s, directory)  # data/xx of a repository made by other tools
                    handle = s.open(tmp, flags)
                try:
                    s.write_all(handle, view)
                    self._fsync_handle(s, handle)
                finally:
                    s.close_handle(handle)
            except _Status as exc:
                self._remove_quiet(s, tmp)
                raise _status_error(exc, f"cannot write {what}") from exc
            self._rename_into_place(s, tmp, path, what, replace=ftype is not FileType.CONFIG)

    def _fsync_handle(self, s: _Session, handle: bytes) -> None:
        if not self._fsync:
            return
        try:
            s.request(CMD_EXTENDED, "fsync@openssh.com", handle)
        except _Status as exc:
            if exc.code != SFTP_OP_UNSUPPORTED:
                raise
            self._fsync = False
            log.warning("%s: the SFTP server cannot fsync; a server crash may lose recent files", self.location)

    def _rename_into_place(self, s: _Session, tmp: str, path: str, what: str, replace: bool) -> None:
        try:
            if replace and self._posix_rename:
                try:
                    s.request(CMD_EXTENDED, "posix-rename@openssh.com", tmp.encode(), path.encode())
                    return
                except _Status as exc:
                    if exc.code != SFTP_OP_UNSUPPORTED:
                        raise
                    self._posix_rename = False
            # Plain SFTP rename never replaces an existing file (OpenSSH: link + unlink).
            s.request(CMD_RENAME, tmp.encode(), path.encode())
        except _Status as exc:
            present = self._present(s, path)
            self._remove_quiet(s, tmp)
            if present and not replace:
                raise AlreadyExists(f"{what} already exists at {self.location}") from exc
            if present:
                return  # names are content hashes: the file in place has the same bytes
            raise _status_error(exc, f"cannot rename {what} into place") from exc

    def _present(self, s: _Session, path: str) -> bool:
        try:
            s.stat(path)
        except _Status:
            return False
        return True

    def _remove_quiet(self, s: _Session, path: str) -> None:
        with contextlib.suppress(_Status):
            s.request(CMD_REMOVE, path.encode())

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._file(ftype, name)
        what = self._what(ftype, name)
        if offset < 0 or (length is not None and length < 0):
            raise BackendError(f"load {what}: negative offset or length")
        with self._session(f"load {what}") as s:
            try:
                handle = s.open(path, SFTP_FLAG_READ)
            except _Status as exc:
                raise _status_error(exc, what) from exc
            want = length
            try:
                if want is None:
                    want = max(0, s.size(handle) - offset)
                return s.read_range(handle, offset, want) if want else b""
            except _Status as exc:
                if exc.code == SFTP_EOF:
                    end = offset + (want or 0)
                    raise BackendError(f"{what}: short read (file ends before byte {end})") from exc
                raise _status_error(exc, f"cannot read {what}") from exc
            finally:
                s.close_handle(handle, wait=False)

    def stat(self, ftype: FileType, name: str) -> int:
        what = self._what(ftype, name)
        with self._session(f"stat {what}") as s:
            try:
                return int(s.stat(self._file(ftype, name)).st_size)
            except _Status as exc:
                raise _status_error(exc, what) from exc

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        if ftype is FileType.CONFIG:
            with contextlib.suppress(NotFound):
                yield "config", self.stat(ftype, "config")
            return
        base = self._join(ftype.value)
        if ftype is not FileType.DATA:
            yield from self._files_in([base])
            return
        with self._session(f"list {base}") as s:
            found = s.listdirs([base])[base]
        if isinstance(found, _Status):
            if found.code == SFTP_NO_SUCH_FILE:
                return
            raise _status_error(found, f"cannot list {base}")
        subdirs = sorted(
            posixpath.join(base, e.filename)
            for e in found
            if not e.filename.startswith(".") and stat_mod.S_ISDIR(e.st_mode or 0)  # skips . and ..
        )
        for i in range(0, len(subdirs), _DIR_BATCH):
            yield from self._files_in(subdirs[i : i + _DIR_BATCH])

    def _files_in(self, dirs: Sequence[str]) -> Iterator[tuple[str, int]]:
        # The whole batch is read before yielding, so a slow consumer never holds a session.
        with self._session(f"list {dirs[0]}") as s:
            listed = s.listdirs(dirs)
        for d in dirs:
            entries = listed[d]
            if isinstance(entries, _Status):
                if entries.code == SFTP_NO_SUCH_FILE:
                    continue
                raise _status_error(entries, f"cannot list {d}")
            for e in entries:
                if not e.filename.startswith(".") and stat_mod.S_ISREG(e.st_mode or 0):
                    yield e.filename, int(e.st_size)

    def remove(self, ftype: FileType, name: str) -> None:
        what = self._what(ftype, name)
        with self._session(f"remove {what}") as s:
            try:
                s.request(CMD_REMOVE, self._file(ftype, name).encode())
            except _Status as exc:
                raise _status_error(exc, f"cannot remove {what}") from exc

    def remove_stale_temporaries(self, max_age: float = 86400.0) -> int:
        """Delete temporary files that killed writers left behind, once surely abandoned."""
        dirs = [self.path or "."] + [self._join(t.value) for t in FileType if t is not FileType.CONFIG]
        dirs += [self._join("data", f"{i:02x}") for i in range(256)]
        cutoff = time.time() - max_age
        removed = 0
        for i in range(0, len(dirs), _DIR_BATCH):
            group = dirs[i : i + _DIR_BATCH]
            with self._session("remove stale temporary files") as s:
                stale = [
                    posixpath.join(d, e.filename)
                    for d, entries in s.listdirs(group).items()
                    if isinstance(entries, list)
                    for e in entries
                    if e.filename.startswith(".") and _TMP_MARK in e.filename and (e.st_mtime or 0) < cutoff
                ]
                replies = s.batch((CMD_REMOVE, p.encode()) for p in stale)
                removed += sum(1 for r in replies if not _failed(r))
        return removed

    def close(self) -> None:
        self._closed = True
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _transport(sock: Any, **kwargs: Any) -> Any:
    """A paramiko Transport that prefers the ciphers cheapest for it, when the server has them."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    preferred = [c for c in _PREFERRED_CIPHERS if c in options.ciphers]
    options.ciphers = tuple(preferred + [c for c in options.ciphers if c not in preferred])
    return transport


def _default_user() -> str:
    import getpass

    return getpass.getuser()


def _dir_attrs() -> Any:
    attrs = paramiko.SFTPAttributes()
    attrs.st_mode = 0o700
    return attrs


def _failed(reply: tuple[int, Any]) -> bool:
    try:
        _check(*reply)
    except _Status:
        return True
    return False


def _status_error(exc: _Status, what: str) -> BackendError:
    if exc.code == SFTP_NO_SUCH_FILE:
        return NotFound(f"{what} not found")
    if exc.code == SFTP_PERMISSION_DENIED:
        return BackendError(f"{what}: permission denied")
    if exc.code == SFTP_OP_UNSUPPORTED:
        return BackendError(f"{what}: operation not supported by the SFTP server")
    # OpenSSH reports ENOSPC, EEXIST, EIO, ... all as a bare "Failure".
    return BackendError(f"{what}: SFTP server error: {exc.message} (disk full, or not writable?)")


def _describe(exc: BaseException) -> str:
    if not str(exc).strip() and isinstance(exc, TimeoutError | EOFError):
        return "timed out" if isinstance(exc, TimeoutError) else "the server closed the connection"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _connect_error(exc: BaseException, where: str, known_hosts: str | None, timed_out: bool = False) -> BackendError:
    hosts_file = known_hosts or "~/.ssh/known_hosts"
    if isinstance(exc, _UnknownHost):
        return BackendError(
            f"cannot connect to {where}: host key not in {hosts_file}; add it (ssh-keyscan) "
            "or set sftp_strict_host_keys=no"
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return BackendError(f"cannot connect to {where}: host key differs from {hosts_file} (possible attack)")
    if isinstance(exc, paramiko.AuthenticationException):
        return BackendError(f"cannot connect to {where}: authentication failed ({_describe(exc)})")
    if isinstance(exc, OSError) and exc.__class__.__name__ == "gaierror":
        return BackendError(f"cannot connect to {where}: unknown host ({_describe(exc)})")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        # paramiko's own text is "[Errno None] Unable to connect to port 22 on 10.0.0.1"; say why.
        reasons = sorted({(e.strerror or _describe(e)).lower() for e in exc.errors.values()})
        return TransientBackendError(f"cannot connect to {where}: {', '.join(reasons) or _describe(exc)}")
    if isinstance(exc, OSError | EOFError | paramiko.SSHException):
        if timed_out:
            # A silent server fails the handshake with whichever of paramiko's waits ends first
            # ("Error reading SSH protocol banner", "No existing session", ...): say what happened.
            return TransientBackendError(f"cannot connect to {where}: the server did not answer (timed out)")
        return TransientBackendError(f"cannot connect to {where}: {_describe(exc)}")
    return BackendError(f"cannot connect to {where}: {_describe(exc)}")
