"""Locks that may have been lost end the command before it saves anything; a damaged lock file
keeps exclusive commands out; release never leaves a lock file behind.

The clock is injected (locks.Clock): a suspend is the wall clock jumping while the monotonic one
stands still. The storage is a real local repository behind a wrapper whose lock writes fail or
wait on demand.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest
from fastrepo import init_fast
from support.cli import CLI, PASSWORD

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.cli.main import main
from backupfs.errors import BackendError, LockLost
from backupfs.ops.backup import Archiver, BackupOptions, BackupStats
from backupfs.prune.execute import execute
from backupfs.prune.options import MaxUnused, PruneOptions
from backupfs.prune.plan import plan_prune
from backupfs.repository import locks
from backupfs.repository.repo import Repository

MINUTE = 60.0


class LockTrouble(LocalBackend):
    """A local repository whose lock writes fail (`fail_locks`) or wait for `go` (`hold_locks`)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.fail_locks = False
        self.hold_locks = False
        self.holding = threading.Event()
        self.go = threading.Event()
        self.lock_writes = 0

    def save(self, ftype: FileType, name: str, data: bytes | memoryview) -> None:
        if ftype is FileType.LOCK:
            if self.fail_locks:
                raise BackendError("lock write refused (test)")
            if self.hold_locks:
                self.holding.set()
                assert self.go.wait(60)
            self.lock_writes += 1
        super().save(ftype, name, data)


class FakeClock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = time.time()

    def clock(self) -> locks.Clock:
        return locks.Clock(monotonic=lambda: self.mono, wall=lambda: self.wall)

    def advance(self, seconds: float, *, suspended: bool = False) -> None:
        """Time passes; while suspended only the wall clock moves."""
        self.wall += seconds
        if not suspended:
            self.mono += seconds


@pytest.fixture
def backend(tmp_path: Path) -> LockTrouble:
    init_fast(tmp_path / "repo")
    return LockTrouble(str(tmp_path / "repo"))


@pytest.fixture
def repo(backend: LockTrouble) -> Iterator[Repository]:
    r = Repository.open(backend, PASSWORD.encode())
    yield r
    r.close()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    for i in range(4):
        (root / f"f{i}").write_bytes(blake3.blake3(bytes([i])).digest(length=200_000))
    return root


def names(backend: LockTrouble, ftype: FileType) -> list[str]:
    return sorted(n for n, _ in backend.list(ftype))


def back_up(repo: Repository, src: Path, during: Callable[[], None]) -> None:
    """A real backup of `src`; `during` runs once, after the first file is saved."""
    done: list[bool] = []

    def progress(_stats: BackupStats, _path: str) -> None:
        if not done:
            done.append(True)
            during()

    repo.load_index()
    Archiver(repo, BackupOptions(paths=[str(src)], workers=1), progress).run()


def test_backup_saves_nothing_once_its_lock_went_unrefreshed_too_long(
    backend: LockTrouble, repo: Repository, src: Path
) -> None:
    clock = FakeClock()
    lock = repo.lock(clock=clock.clock())
    first_lock = names(backend, FileType.LOCK)

    def storage_refuses_lock_writes() -> None:
        backend.fail_locks = True
        for _ in range(5):  # 25 minutes of failed refreshes: past LOST_AFTER, short of stale
            clock.advance(locks.REFRESH_INTERVAL)
            lock.refresh()

    with pytest.raises(LockLost) as info:
        back_up(repo, src, storage_refuses_lock_writes)
    assert info.value.exit_code == 13
    assert "could not be refreshed for 25 minutes" in str(info.value)
    assert names(backend, FileType.SNAPSHOT) == []
    assert names(backend, FileType.INDEX) == []  # no index names packs a prune may have deleted
    assert names(backend, FileType.LOCK) == first_lock
    backend.fail_locks = False
    repo.close()
    assert names(backend, FileType.LOCK) == []


def test_a_suspend_past_the_stale_time_loses_the_lock(backend: LockTrouble, repo: Repository, src: Path) -> None:
    clock = FakeClock()
    lock = repo.lock(clock=clock.clock())
    writes = backend.lock_writes

    def suspend() -> None:
        clock.advance(40 * MINUTE, suspended=True)  # the laptop lid closed for 40 minutes
        clock.advance(1)
        lock.refresh()  # it goes on (holding off prunes to come) but cannot vouch for the gap

    with pytest.raises(LockLost) as info:
        back_up(repo, src, suspend)
    assert "jumped 40 minutes" in str(info.value) and "suspended" in str(info.value)
    assert backend.lock_writes == writes + 1
    assert names(backend, FileType.SNAPSHOT) == []


def test_refreshes_failing_for_a_while_or_a_short_suspend_lose_nothing(
    backend: LockTrouble, repo: Repository, src: Path
) -> None:
    clock = FakeClock()
    lock = repo.lock(clock=clock.clock())

    def hiccups() -> None:
        backend.fail_locks = True
        for _ in range(3):  # 15 minutes without a successful refresh
            clock.advance(locks.REFRESH_INTERVAL)
            lock.refresh()
        backend.fail_locks = False
        lock.refresh()
        for _ in range(6):  # then an hour of normal refreshes, and a 10-minute suspend
            clock.advance(locks.REFRESH_INTERVAL)
            lock.refresh()
        clock.advance(10 * MINUTE, suspended=True)

    back_up(repo, src, hiccups)
    assert len(names(backend, FileType.SNAPSHOT)) == 1
    assert len(names(backend, FileType.LOCK)) == 1  # each refresh removed the file before it


def test_lock_lost_is_exit_13_with_one_line(
    tmp_path: Path,
    src: Path,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Through the real CLI (in this process, so the clock can jump when the first file is read)."""
    init_fast(tmp_path / "repo")
    for key, value in cli_env.items():
        monkeypatch.setenv(key, value)
    clock = FakeClock()
    monkeypatch.setattr(locks, "SYSTEM_CLOCK", clock.clock())
    real_pread = os.pread
    target = (src / "f0").stat().st_ino

    def pread(fd: int, n: int, offset: int) -> bytes:
        if os.fstat(fd).st_ino == target and clock.mono == 1000.0:
            clock.advance(35 * MINUTE, suspended=True)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    code = main(["-r", str(tmp_path / "repo"), "backup", str(src)])
    _out, err = capfd.readouterr()
    assert code == 13, err
    assert err.count("\n") == 1 and err.startswith("backupfs: the repository lock was lost"), err
    assert not list((tmp_path / "repo" / "snapshots").iterdir())
    assert not list((tmp_path / "repo" / "locks").iterdir())


def test_release_during_a_refresh_leaves_no_lock_file(
    backend: LockTrouble, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh thread writing a new lock file while release removes the old one must not
    leave the new one behind (it would block every prune for 30 minutes)."""
    monkeypatch.setattr(locks, "REFRESH_INTERVAL", 0.001)
    backend.hold_locks = False
    lock = repo.lock()
    backend.hold_locks = True
    assert backend.holding.wait(60)  # the refresh thread is inside its lock write
    releasing = threading.Thread(target=lock.release)
    releasing.start()
    releasing.join(0.2)  # gives a release that does not wait the time to do its damage
    backend.go.set()
    releasing.join(60)
    lock._thread.join(60)
    assert names(backend, FileType.LOCK) == []


def test_unreadable_lock_file_blocks_exclusive_commands_only(tmp_path: Path, cli_env: dict[str, str]) -> None:
    init_fast(tmp_path / "repo")
    cli = CLI(tmp_path / "repo", cli_env)
    garbage = b"not a lock: damaged, or written by no backupfs"
    (tmp_path / "repo" / "locks" / blake3.blake3(garbage).hexdigest()).write_bytes(garbage)

    proc = cli("prune", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 11, err
    assert err.count("\n") == 1 and "lock file that cannot be read" in err and "unlock --remove-all" in err
    src = tmp_path / "src"
    src.mkdir()
    cli("backup", src)  # shared: may run beside whatever it is
    cli("snapshots")
    cli("unlock")  # only stale locks: an unreadable one is not judged
    assert cli("prune", check=False).returncode == 11
    cli("unlock", "--remove-all")
    cli("prune")


@pytest.mark.parametrize("lost_after", ["planned", "delete:index-written"])
def test_prune_deletes_nothing_once_its_lock_was_lost(backend: LockTrouble, src: Path, lost_after: str) -> None:
    """A prune whose exclusive lock went stale while it planned lets backups in: it must stop
    before its first deletion (a backup may by then be using the blobs it judged unused)."""
    first = Repository.open(backend, PASSWORD.encode())
    first.lock()
    back_up(first, src, lambda: None)
    first.close()
    snapshot = names(backend, FileType.SNAPSHOT)[0]
    backend.remove(FileType.SNAPSHOT, snapshot)  # forgotten: every pack is garbage now
    packs, indexes = names(backend, FileType.DATA), names(backend, FileType.INDEX)

    repo = Repository.open(backend, PASSWORD.encode())
    clock = FakeClock()
    repo.lock(exclusive=True, clock=clock.clock())
    repo.load_index()
    plan = plan_prune(repo, PruneOptions(max_unused=MaxUnused(0.0)))
    assert plan.delete, "nothing to delete: the test proves nothing"

    def phase(name: str) -> None:
        if name == lost_after:
            clock.advance(31 * MINUTE, suspended=True)

    with pytest.raises(LockLost) as info:
        execute(plan, hook=phase)
    assert info.value.exit_code == 13 and "prune stopped" in str(info.value)
    assert names(backend, FileType.DATA) == packs
    assert set(indexes) <= set(names(backend, FileType.INDEX))  # a new index may supersede them
    repo.close()
