"""Repository locks (design.md 11): shared for readers and backups, exclusive for prune."""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from collections.abc import Callable

from backupfs.backends.base import Backend, FileType
from backupfs.crypto import file_id
from backupfs.errors import BackendError, IntegrityError, LockError, NotFound
from backupfs.format.lock import LockInfo

REFRESH_INTERVAL = 300.0
STALE_AFTER_NS = 30 * 60 * 10**9


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(info: LockInfo, now_ns: int | None = None) -> bool:
    now_ns = time.time_ns() if now_ns is None else now_ns
    if now_ns - info.time_ns > STALE_AFTER_NS:
        return True
    return info.host == socket.gethostname() and not _pid_alive(info.pid)


class Lock:
    """A held lock; refreshed by a daemon thread until released."""

    def __init__(
        self,
        backend: Backend,
        seal: Callable[[bytes], bytes],
        name: str,
        exclusive: bool,
    ) -> None:
        self._backend = backend
        self._seal = seal
        self.name = name
        self.exclusive = exclusive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="bfs-lock-refresh", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_INTERVAL):
            try:
                new = _write_lock(self._backend, self._seal, self.exclusive)
                old, self.name = self.name, new
                self._backend.remove(FileType.LOCK, old)
            except BackendError:
                continue

    def release(self) -> None:
        self._stop.set()
        try:
            self._backend.remove(FileType.LOCK, self.name)
        except BackendError:
            pass


def _write_lock(backend: Backend, seal: Callable[[bytes], bytes], exclusive: bool) -> str:
    info = LockInfo(time.time_ns(), exclusive, socket.gethostname(), getpass.getuser(), os.getpid())
    data = seal(info.encode())
    name = file_id(data)
    backend.save(FileType.LOCK, name, data)
    return name


def acquire(
    backend: Backend,
    seal: Callable[[bytes], bytes],
    read_lock: Callable[[str], LockInfo],
    exclusive: bool,
    retry_for: float = 0.0,
) -> Lock:
    """Write our lock, then look for conflicting ones; back off and retry on conflict.

    Writing first and checking after closes the race where two processes both see no lock.
    """
    deadline = time.monotonic() + retry_for
    while True:
        name = _write_lock(backend, seal, exclusive)
        conflict = _find_conflict(backend, read_lock, name, exclusive)
        if conflict is None:
            return Lock(backend, seal, name, exclusive)
        try:
            backend.remove(FileType.LOCK, name)
        except NotFound:
            pass
        if time.monotonic() >= deadline:
            kind = "exclusively " if conflict.exclusive else ""
            raise LockError(
                f"repository is already locked {kind}by PID {conflict.pid} on {conflict.host} "
                f"by {conflict.user} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(conflict.time_ns / 1e9))}"
                " (use `backupfs unlock` if that process is gone)"
            )
        time.sleep(min(5.0, max(0.2, deadline - time.monotonic())))


def _find_conflict(
    backend: Backend, read_lock: Callable[[str], LockInfo], own: str, exclusive: bool
) -> LockInfo | None:
    for name, _size in backend.list(FileType.LOCK):
        if name == own:
            continue
        try:
            info = read_lock(name)
        except NotFound:
            continue
        except IntegrityError:
            continue  # unreadable lock: not ours to judge; `unlock --remove-all` clears it
        if is_stale(info):
            continue
        if exclusive or info.exclusive:
            return info
    return None


def remove_stale(backend: Backend, read_lock: Callable[[str], LockInfo], remove_all: bool = False) -> int:
    removed = 0
    for name, _size in list(backend.list(FileType.LOCK)):
        try:
            stale = remove_all or is_stale(read_lock(name))
        except IntegrityError:
            stale = remove_all
        except NotFound:
            continue
        if stale:
            try:
                backend.remove(FileType.LOCK, name)
                removed += 1
            except NotFound:
                pass
    return removed
