"""A repository on an SSH server, over SFTP, with the same layout as a local one.

The Backend protocol in terms of paths and SFTP status codes: requests go through
protocol.Session, sessions come from a pool.SessionPool, and how the connection is made is the
connector's business: openssh.py (the system's ssh client) or connect.py (paramiko).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import posixpath
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from backupfs.backends import layout
from backupfs.backends.base import STALE_TEMPORARY_AGE, BackendInfo, FileType
from backupfs.backends.sftp import openssh
from backupfs.backends.sftp.pool import SessionPool, SessionRefused
from backupfs.backends.sftp.protocol import (
    CONNECTION_ERRORS,
    END_OF_FILE,
    NO_SUCH_FILE,
    UNSUPPORTED,
    Attrs,
    Session,
    Status,
    describe,
    status_error,
)
from backupfs.errors import AlreadyExists, BackendError, NotFound, TransientBackendError

log = logging.getLogger(__name__)

# Loads at once per session: each costs two round trips (open, then the pipelined reads) that
# only other loads in flight can hide.
_READS_PER_SESSION = 8
_DIR_BATCH = 256  # directories listed at once (each holds a server-side handle meanwhile)
# Sessions per backend unless sftp_connections says otherwise (docs/backends.md has the
# measurements): each is shared by any number of threads; with OpenSSH each is an ssh process,
# a login of its own. On loopback (2 cores) two carried twice what one did with chacha20, as
# much with AES-GCM; four, less than two.
DEFAULT_CONNECTIONS = 2
TRANSPORTS = ("auto", "openssh", "paramiko")


def choose_transport(transport: str, ssh_command: Sequence[str] | None = None) -> str:
    """openssh or paramiko: "auto" means OpenSSH when its client is installed."""
    if transport not in TRANSPORTS:
        raise BackendError(f"unknown SFTP transport {transport!r} (use {', '.join(TRANSPORTS)})")
    if ssh_command and transport == "paramiko":
        raise BackendError("an ssh command needs the openssh transport, not paramiko")
    if transport == "auto":
        return "openssh" if ssh_command or openssh.find_ssh() else "paramiko"
    if transport == "openssh" and not ssh_command and not openssh.find_ssh():
        raise BackendError("no ssh client found: install OpenSSH's client, or use sftp_transport=paramiko")
    return transport


class SFTPBackend:
    """Repository files under `path` on an SSH server: config, keys/, data/xx/, index/, ...

    `path` may be absolute or relative to the login directory. Connects lazily and reconnects
    after a connection failure (the failed call raises TransientBackendError; the retry
    wrapper repeats it). `transport` is "openssh" (the system's ssh client, `ssh_command`
    replacing its whole command line or `ssh_args` added to it), "paramiko", or "auto": OpenSSH
    when an ssh client is installed. What is None here, the ssh configuration decides (OpenSSH;
    paramiko: the registry read ~/.ssh/config). `connector` replaces all of that: it makes a
    connection and raises BackendError (TransientBackendError if worth retrying).
    """

    def __init__(
        self,
        host: str,
        path: str,
        *,
        user: str | None = None,
        port: int | None = None,
        key_filename: str | None = None,
        known_hosts: str | None = None,
        strict_host_keys: bool | None = None,
        connections: int | None = None,
        timeout: float = 30.0,
        transport: str = "auto",
        ssh_command: Sequence[str] | None = None,
        ssh_args: Sequence[str] = (),
        connector: Callable[[], SessionPool] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.path = path.rstrip("/") or ("/" if path.startswith("/") else "")
        self.key_filename = key_filename
        self.known_hosts = known_hosts
        self.strict_host_keys = strict_host_keys
        self.timeout = timeout
        self.transport = choose_transport(transport, ssh_command)
        self.ssh_command = list(ssh_command) if ssh_command else None
        self.ssh_args = list(ssh_args)
        self.connections = max(1, connections or DEFAULT_CONNECTIONS)
        if connector is None:
            connector = self._openssh_connection if self.transport == "openssh" else self._paramiko_connection
        self._connector = connector
        self._lock = threading.Lock()
        self._conn: SessionPool | None = None
        self._connect_error: tuple[float, BackendError] | None = None  # when and how the latest attempt failed
        self._closed = False
        self._fsync = True  # fsync@openssh.com; cleared when the server says it is unsupported
        self._posix_rename = True  # posix-rename@openssh.com, likewise

    @property
    def location(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"sftp://{user}{host}{port}/{self.path}"

    # --- connection management ---

    def _where(self) -> str:
        """user@host:port as far as known here (OpenSSH may take the rest from ssh_config)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}{':' + str(self.port) if self.port else ''}"

    def _openssh_connection(self) -> SessionPool:
        if self.key_filename and not os.path.exists(self.key_filename):
            raise BackendError(f"SFTP identity file {self.key_filename} does not exist")  # ssh: only a warning
        if self.ssh_command is None:  # built once: it asks `ssh -G` about the ciphers
            self.ssh_command = openssh.ssh_command(
                self.host,
                user=self.user,
                port=self.port,
                key_filename=self.key_filename,
                known_hosts=self.known_hosts,
                strict_host_keys=self.strict_host_keys,
                timeout=self.timeout,
                args=self.ssh_args,
            )
        return openssh.connect(self.ssh_command, self._where(), self.connections, self.timeout, self.known_hosts)

    def _paramiko_connection(self) -> SessionPool:
        # Imported here, not at the top: paramiko (with cryptography and invoke) costs ~0.4 s of
        # start-up, which every command on the default OpenSSH transport would pay for nothing.
        from backupfs.backends.sftp.connect import connect

        return connect(
            self.host,
            self.port or 22,
            self.user or getpass.getuser(),
            self.key_filename,
            self.known_hosts,
            self.strict_host_keys is not False,
            self.connections,
            self.timeout,
        )

    def _connection(self) -> SessionPool:
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
                self._conn = self._connector()
            except BackendError as exc:
                self._connect_error = (time.monotonic(), exc)
                raise
            self._connect_error = None
            return self._conn

    @contextlib.contextmanager
    def _session(self, what: str) -> Iterator[Session]:
        """A session to use; connection failures become TransientBackendError.

        Status (the server's answer to a request) passes through untouched: the caller knows
        what a missing file means for its operation.
        """
        conn = self._connection()
        try:
            session = conn.acquire()
        except SessionRefused as exc:  # the connection itself is fine
            raise TransientBackendError(f"{what}: {self.host} refused an SFTP session: {describe(exc)}") from exc
        except CONNECTION_ERRORS as exc:
            conn.close()
            raise TransientBackendError(f"{what}: connection to {self.host} failed: {describe(exc)}") from exc
        try:
            yield session
        except CONNECTION_ERRORS as exc:  # includes timeouts: the stream state is unknown
            conn.close()
            raise TransientBackendError(f"{what}: connection to {self.host} failed: {describe(exc)}") from exc
        finally:
            conn.release(session)

    # --- paths ---

    def _remote(self, rel: str) -> str:
        """The server-side path of a path relative to the repository (layout.py)."""
        if not rel:
            return self.path or "."
        return posixpath.join(self.path, rel) if self.path else rel

    def _file(self, ftype: FileType, name: str) -> str:
        return self._remote(layout.path(ftype, name))

    @staticmethod
    def _what(ftype: FileType, name: str) -> str:
        return "config" if ftype is FileType.CONFIG else f"{ftype.value}/{name}"

    # --- Backend protocol ---

    def exists(self) -> bool:
        try:
            self.stat(FileType.CONFIG, layout.CONFIG_NAME)
        except NotFound:
            return False
        return True

    def create(self) -> None:
        if self.exists():
            raise AlreadyExists(f"a repository already exists at {self.location}")
        dirs = [self._remote(rel) for rel in layout.directories()]
        with self._session(f"create {self.location}") as s:
            if self.path:
                self._makedirs(s, self.path)
            for d in s.mkdirs(dirs):  # usually "already exists"; anything else shows up in the stat
                try:
                    if not stat_mod.S_ISDIR(s.stat(d).st_mode or 0):
                        raise BackendError(f"cannot create {d}: a file is in the way")
                except Status as exc:
                    raise status_error(exc, f"cannot create directory {d}") from exc

    def _makedirs(self, s: Session, path: str) -> None:
        """mkdir -p: try the full path first, walk up only when a parent is missing."""
        try:
            if stat_mod.S_ISDIR(s.stat(path).st_mode or 0):
                return
            raise BackendError(f"{path} exists and is not a directory")
        except Status as exc:
            if exc.code != NO_SUCH_FILE:
                raise status_error(exc, f"cannot access {path}") from exc
        parent = posixpath.dirname(path)
        if parent and parent not in (path, "/", "."):
            self._makedirs(s, parent)
        try:
            s.mkdir(path)
        except Status as exc:
            try:  # lost a race with another writer?
                if stat_mod.S_ISDIR(s.stat(path).st_mode or 0):
                    return
            except Status:
                pass
            raise status_error(exc, f"cannot create directory {path}") from exc

    def save(self, ftype: FileType, name: str, data: bytes | memoryview) -> None:
        path = self._file(ftype, name)
        directory = posixpath.dirname(path) or "."
        tmp = posixpath.join(directory, layout.temporary_name(name))
        what = self._what(ftype, name)
        view = memoryview(data).cast("B")
        with self._session(f"save {what}") as s:
            try:
                try:
                    handle = s.create(tmp)
                except Status as exc:
                    if exc.code != NO_SUCH_FILE:
                        raise
                    self._makedirs(s, directory)  # data/xx of a repository made by other tools
                    handle = s.create(tmp)
                try:
                    s.write_all(handle, view)
                    self._fsync_handle(s, handle)
                finally:
                    s.close_handle(handle)
            except Status as exc:
                self._remove_quiet(s, tmp)
                raise status_error(exc, f"cannot write {what}") from exc
            self._rename_into_place(s, tmp, path, what, replace=ftype is not FileType.CONFIG)

    def _fsync_handle(self, s: Session, handle: bytes) -> None:
        if not self._fsync:
            return
        try:
            s.fsync(handle)
        except Status as exc:
            if exc.code != UNSUPPORTED:
                raise
            self._fsync = False
            log.warning("%s: the SFTP server cannot fsync; a server crash may lose recent files", self.location)

    def _rename_into_place(self, s: Session, tmp: str, path: str, what: str, replace: bool) -> None:
        try:
            if replace and self._posix_rename:
                try:
                    s.posix_rename(tmp, path)
                    return
                except Status as exc:
                    if exc.code != UNSUPPORTED:
                        raise
                    self._posix_rename = False
            s.rename(tmp, path)  # never replaces an existing file
        except Status as exc:
            present = self._present(s, path)
            self._remove_quiet(s, tmp)
            if present and not replace:
                raise AlreadyExists(f"{what} already exists at {self.location}") from exc
            if present:
                return  # names are content hashes: the file in place has the same bytes
            raise status_error(exc, f"cannot rename {what} into place") from exc

    def _present(self, s: Session, path: str) -> bool:
        try:
            s.stat(path)
        except Status:
            return False
        return True

    def _remove_quiet(self, s: Session, path: str) -> None:
        with contextlib.suppress(Status):
            s.remove(path)

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._file(ftype, name)
        what = self._what(ftype, name)
        if offset < 0 or (length is not None and length < 0):
            raise BackendError(f"load {what}: negative offset or length")
        with self._session(f"load {what}") as s:
            try:
                handle = s.open_read(path)
            except Status as exc:
                raise status_error(exc, what) from exc
            want = length
            try:
                if want is None:
                    want = max(0, s.size(handle) - offset)
                return s.read_range(handle, offset, want) if want else b""
            except Status as exc:
                if exc.code == END_OF_FILE:
                    end = offset + (want or 0)
                    raise BackendError(f"{what}: short read (file ends before byte {end})") from exc
                raise status_error(exc, f"cannot read {what}") from exc
            finally:
                s.close_handle(handle, wait=False)

    def stat(self, ftype: FileType, name: str) -> int:
        what = self._what(ftype, name)
        with self._session(f"stat {what}") as s:
            try:
                return _size(s.stat(self._file(ftype, name)), what)
            except Status as exc:
                raise status_error(exc, what) from exc

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        if ftype is FileType.CONFIG:
            with contextlib.suppress(NotFound):
                yield layout.CONFIG_NAME, self.stat(ftype, layout.CONFIG_NAME)
            return
        if ftype is not FileType.DATA:
            yield from self._files_in(ftype, [ftype.value])
            return
        base = self._remote(ftype.value)
        with self._session(f"list {base}") as s:
            found = s.listdirs([base])[base]
        if isinstance(found, Status):
            if found.code == NO_SUCH_FILE:
                return
            raise status_error(found, f"cannot list {base}")
        subdirs = sorted(
            f"{ftype.value}/{e.filename}"
            for e in found
            if not e.filename.startswith(".") and stat_mod.S_ISDIR(e.st_mode or 0)  # skips . and ..
        )
        for i in range(0, len(subdirs), _DIR_BATCH):
            yield from self._files_in(ftype, subdirs[i : i + _DIR_BATCH])

    def _files_in(self, ftype: FileType, rels: Sequence[str]) -> Iterator[tuple[str, int]]:
        # The whole batch is read before yielding, so a slow consumer never holds a session.
        dirs = [self._remote(rel) for rel in rels]
        with self._session(f"list {dirs[0]}") as s:
            listed = s.listdirs(dirs)
        for rel, d in zip(rels, dirs, strict=True):
            entries = listed[d]
            if isinstance(entries, Status):
                if entries.code == NO_SUCH_FILE:
                    continue
                raise status_error(entries, f"cannot list {d}")
            for e in entries:
                if layout.belongs(ftype, rel, e.filename) and stat_mod.S_ISREG(e.st_mode or 0):
                    yield e.filename, _size(e, f"{rel}/{e.filename}")

    def list_foreign(self) -> Iterator[str]:
        base = self._remote(FileType.DATA.value)
        with self._session(f"list {base}") as s:
            found = s.listdirs([base])[base]
        subs = (
            []
            if isinstance(found, Status)
            else [e.filename for e in found if not e.filename.startswith(".") and stat_mod.S_ISDIR(e.st_mode or 0)]
        )
        rels = layout.foreign_folders(subs)
        for i in range(0, len(rels), _DIR_BATCH):
            group = rels[i : i + _DIR_BATCH]
            with self._session("list foreign files") as s:
                listed = s.listdirs([self._remote(rel) for rel in group])
            for rel in group:
                entries = listed[self._remote(rel)]
                if isinstance(entries, Status):
                    continue
                for e in entries:
                    is_dir = e.filename in (".", "..") or stat_mod.S_ISDIR(e.st_mode or 0)
                    if not is_dir and layout.is_foreign(rel, e.filename):
                        yield f"{rel}/{e.filename}" if rel else e.filename

    def remove(self, ftype: FileType, name: str) -> None:
        what = self._what(ftype, name)
        with self._session(f"remove {what}") as s:
            try:
                s.remove(self._file(ftype, name))
            except Status as exc:
                raise status_error(exc, f"cannot remove {what}") from exc

    def info(self) -> BackendInfo:
        return BackendInfo(
            local=False,
            append_only=False,
            sweeps_temporaries=True,
            reads_in_flight=_READS_PER_SESSION * self.connections,
        )

    def remove_stale_temporaries(self, max_age: float = STALE_TEMPORARY_AGE) -> int:
        """Delete temporary files that killed writers left behind, once surely abandoned."""
        dirs = [self._remote(rel) for rel in ["", *layout.directories()]]
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
                    if layout.is_temporary(e.filename) and (e.st_mtime or 0) < cutoff
                ]
                removed += s.remove_many(stale)
        return removed

    def close(self) -> None:
        self._closed = True
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _size(attrs: Attrs, what: str) -> int:
    if attrs.st_size is None:  # OpenSSH always says; a server that does not cannot hold a repository
        raise BackendError(f"{what}: the SFTP server does not report file sizes")
    return attrs.st_size
