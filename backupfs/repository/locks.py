"""Repository locks (format.md 11): shared for readers and backups, exclusive for prune."""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket
import threading
import time
from collections.abc import Callable

from backupfs.backends.base import Backend, FileType
from backupfs.crypto import file_id
from backupfs.errors import BackendError, IntegrityError, LockError, LockLost, NotFound
from backupfs.format.lock import LockInfo

REFRESH_INTERVAL = 300.0
STALE_AFTER = 30 * 60.0
STALE_AFTER_NS = int(STALE_AFTER * 10**9)
# Unrefreshed for this long, the lock may be stale to another host: its clock may run ahead of
# ours, and it judges by the time in the file (restic uses the same margin).
LOST_AFTER = STALE_AFTER - 1.5 * REFRESH_INTERVAL
RETRY_SLEEP_RANGE = (0.2, 5.0)  # seconds between looks at a conflicting lock (`--retry-lock`)
SUSPEND_SLACK = 60.0  # the wall clock ran ahead of the monotonic one by more: the machine slept


@dataclasses.dataclass(frozen=True, slots=True)
class Clock:
    """Where a lock gets the time: injectable, so tests can suspend the machine.

    `monotonic` stops while the machine is suspended (CLOCK_MONOTONIC); `wall` does not, and it is
    what other processes compare the lock file's time with.
    """

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time


SYSTEM_CLOCK = Clock()


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
    """A held lock, refreshed by a daemon thread until released, that knows when it may be lost.

    Another process judges a lock stale by the time in its file. Once ours has gone unrefreshed
    for LOST_AFTER (refreshes failing, or the machine suspended: the wall clock jumped while the
    monotonic one stood still) a prune elsewhere may have ignored it and deleted packs that our
    unwritten index would name, so `check()` raises from then on and the owner writes no index
    or snapshot. A late refresh cannot undo that: the loss is final.
    """

    def __init__(
        self,
        backend: Backend,
        seal: Callable[[bytes], bytes],
        name: str,
        exclusive: bool,
        written: tuple[float, float],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._backend = backend
        self._seal = seal
        self.name = name
        self.exclusive = exclusive
        self._clock = clock
        self._last_mono, self._last_wall = written  # when the current lock file was written
        self._lost: str | None = None
        self._state = threading.Lock()  # the fields above
        self._writing = threading.Lock()  # one refresh or release at a time: no file left behind
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="bfs-lock-refresh", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_INTERVAL):
            self.refresh()

    def refresh(self) -> None:
        """Writes a new lock file, then deletes the old one. A failure is tried again at the next
        interval; until LOST_AFTER has passed since the last success, nothing is lost.

        The gap is judged before the write that ends it. A lock found lost stays lost, but is
        still refreshed: it keeps prunes yet to start away from a mount that goes on reading, or
        from a backup's packs while it stops."""
        with self._writing:
            if self._stop.is_set():
                return
            self._expired()
            try:
                new, written = _write_lock(self._backend, self._seal, self.exclusive, self._clock)
            except BackendError:
                return
            with self._state:
                old, self.name = self.name, new
                self._last_mono, self._last_wall = written
            try:
                self._backend.remove(FileType.LOCK, old)
            except BackendError:
                pass  # ours, and stale soon: `unlock` removes it

    def _expired(self) -> str | None:
        """Why the lock may be lost (final once said), or None."""
        with self._state:
            if self._lost is None:
                mono_gap = self._clock.monotonic() - self._last_mono
                wall_gap = self._clock.wall() - self._last_wall
                if max(mono_gap, wall_gap) > LOST_AFTER:
                    if wall_gap > mono_gap + SUSPEND_SLACK:
                        self._lost = (
                            f"the clock jumped {wall_gap / 60:.0f} minutes since the last refresh while this "
                            f"process ran {mono_gap / 60:.0f} (was the machine suspended?)"
                        )
                    else:
                        self._lost = f"it could not be refreshed for {max(mono_gap, wall_gap) / 60:.0f} minutes"
            return self._lost

    def check(self) -> None:
        """Raises LockLost if another process may have judged this lock stale."""
        reason = self._expired()
        if reason is not None:
            raise LockLost(
                f"the repository lock was lost: {reason}; another process may have removed data this one "
                "relies on, so nothing more was saved. Run the command again"
            )

    def release(self) -> None:
        """Removes the lock file; waits for a refresh in flight, so its new file is the one removed."""
        self._stop.set()
        with self._writing:
            try:
                self._backend.remove(FileType.LOCK, self.name)
            except BackendError:
                pass
        self._thread.join()


def _write_lock(
    backend: Backend, seal: Callable[[bytes], bytes], exclusive: bool, clock: Clock
) -> tuple[str, tuple[float, float]]:
    """Saves a new lock file; returns its name and the (monotonic, wall) time written in it."""
    mono, wall = clock.monotonic(), clock.wall()
    info = LockInfo(int(wall * 10**9), exclusive, socket.gethostname(), getpass.getuser(), os.getpid())
    data = seal(info.encode())
    name = file_id(data)
    backend.save(FileType.LOCK, name, data)
    return name, (mono, wall)


def acquire(
    backend: Backend,
    seal: Callable[[bytes], bytes],
    read_lock: Callable[[str], LockInfo],
    exclusive: bool,
    retry_for: float = 0.0,
    clock: Clock = SYSTEM_CLOCK,
) -> Lock:
    """Write our lock, then look for conflicting ones; back off and retry on conflict.

    Writing first and checking after closes the race where two processes both see no lock.
    """
    deadline = time.monotonic() + retry_for
    while True:
        name, written = _write_lock(backend, seal, exclusive, clock)
        conflict = _find_conflict(backend, read_lock, name, exclusive)
        if conflict is None:
            return Lock(backend, seal, name, exclusive, written, clock)
        try:
            backend.remove(FileType.LOCK, name)
        except NotFound:
            pass
        if time.monotonic() >= deadline:
            raise LockError(conflict)
        time.sleep(min(RETRY_SLEEP_RANGE[1], max(RETRY_SLEEP_RANGE[0], deadline - time.monotonic())))


def _find_conflict(backend: Backend, read_lock: Callable[[str], LockInfo], own: str, exclusive: bool) -> str | None:
    """Why our lock cannot be held beside the others, or None."""
    for name, _size in backend.list(FileType.LOCK):
        if name == own:
            continue
        try:
            info = read_lock(name)
        except NotFound:
            continue
        except IntegrityError as exc:
            if not exclusive:
                continue  # readers and backups may share with whatever it is
            # It may be a live backup's lock, damaged: an exclusive command must not bet on it.
            return (
                f"repository has a lock file that cannot be read ({exc}); if no other backupfs "
                "process uses the repository, remove it with `backupfs unlock --remove-all`"
            )
        if is_stale(info):
            continue
        if exclusive or info.exclusive:
            kind = "exclusively " if info.exclusive else ""
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.time_ns / 1e9))
            return (
                f"repository is already locked {kind}by PID {info.pid} on {info.host} by {info.user} "
                f"since {since} (use `backupfs unlock` if that process is gone)"
            )
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
