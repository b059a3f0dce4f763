"""Object Lock in the repository, on the memory backend's imitation of S3 Object Lock with a
clock the tests move: the config, retention on writes, extension by backups, and prune and
forget on a repository where some deletes are refused. The same rules against a real Ceph RGW:
tests/backends/test_object_lock.py."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.backends.memory import MemoryBackend
from backupfs.errors import IntegrityError, UsageError
from backupfs.format.config import ConfigBody, ConfigHeader, ObjectLockConfig
from backupfs.format.snapshot import Snapshot
from backupfs.repository import retention
from backupfs.repository.repo import Repository

PASSWORD = b"object lock"
FAST_KDF = (1, 8 * 1024 * 1024)
DAY = retention.DAY
T0 = 1_900_000_000.0  # the imitated storage's clock starts here


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


LOCK30 = ObjectLockConfig("compliance", 30)


def _init(backend: MemoryBackend, lock: ObjectLockConfig | None = LOCK30) -> Repository:
    return Repository.init(backend, PASSWORD, kdf=FAST_KDF, object_lock=lock)


# ---------------------------------------------------------------- the config


def test_a_repository_without_object_lock_keeps_the_version_1_config() -> None:
    """Old repositories stay as they are: no new key in the body, version 1 in the header."""
    body = ConfigBody((1, 2, 3), 1 << 24, "lz4")
    assert msgpack.unpackb(body.encode()) == {"chunker": [1, 2, 3], "pack_size": 1 << 24, "compression": "lz4"}
    assert ConfigBody.decode(body.encode()) == body
    header = ConfigHeader(b"i" * 32, "aegis256", b"body")
    assert msgpack.unpackb(header.encode())["v"] == 1
    repo = _init(MemoryBackend(), None)
    assert repo.header.version == 1 and repo.config.object_lock is None
    repo.close()


def test_the_retention_is_recorded_in_the_encrypted_body_of_a_version_2_config() -> None:
    backend = MemoryBackend(object_lock=True)
    _init(backend, ObjectLockConfig("governance", 30)).close()
    raw = backend.load(FileType.CONFIG, "config")
    header = ConfigHeader.decode(raw)
    assert header.version == 2
    assert b"governance" not in raw  # the setting is in the encrypted body
    repo = Repository.open(backend, PASSWORD)
    assert repo.config.object_lock == ObjectLockConfig("governance", 30)
    repo.close()


@pytest.mark.parametrize(
    "value",
    [
        {"mode": "compliance", "days": 0},
        {"mode": "compliance", "days": -1},
        {"mode": "compliance", "days": 10**9},
        {"mode": "compliance", "days": True},
        {"mode": "compliance", "days": "30"},
        {"mode": "COMPLIANCE", "days": 30},
        {"mode": None, "days": 30},
        {"days": 30},
        [30],
        "compliance",
    ],
)
def test_a_malformed_retention_in_the_config_is_refused(value: object) -> None:
    body = msgpack.packb({"chunker": [1, 2, 3], "pack_size": 1 << 24, "compression": "lz4", "object_lock": value})
    with pytest.raises(IntegrityError, match="object_lock"):
        ConfigBody.decode(body)


@pytest.mark.parametrize("version", [0, 3, True, "2", None])
def test_unknown_config_versions_are_refused(version: object) -> None:
    data = msgpack.packb({"magic": "backupfs", "v": version, "id": b"i" * 32, "aead": "aegis256", "body": b""})
    with pytest.raises(IntegrityError, match="format version"):
        ConfigHeader.decode(data)


# ---------------------------------------------------------------- init and writes


def test_every_file_but_the_locks_is_written_locked() -> None:
    clock = Clock()
    backend = MemoryBackend(object_lock=True, clock=clock)
    repo = _init(backend, ObjectLockConfig("compliance", 30))
    lk = repo.lock()
    locked = (30 + retention.EXTEND_STEP_DAYS) * DAY
    assert backend.retention(FileType.CONFIG, "config") == T0 + locked
    (key,) = [n for n, _ in backend.list(FileType.KEY)]
    assert backend.retention(FileType.KEY, key) == T0 + locked
    assert backend.retention(FileType.LOCK, lk.name) is None
    repo.close()  # the lock file could be removed
    assert list(backend.list(FileType.LOCK)) == []


def test_a_short_retention_is_extended_by_itself() -> None:
    """The step past the promise is a week, or the retention when shorter."""
    assert retention.write_seconds(ObjectLockConfig("compliance", 1)) == 2 * DAY
    assert retention.write_seconds(ObjectLockConfig("compliance", 30)) == 37 * DAY


def test_init_refuses_storage_without_object_lock(tmp_path: Path) -> None:
    plain = MemoryBackend()
    with pytest.raises(UsageError, match="does not offer"):
        _init(plain)
    assert not plain.exists() and list(plain.list(FileType.KEY)) == []
    local = LocalBackend(str(tmp_path / "repo"))
    with pytest.raises(UsageError, match="only s3: repositories"):
        Repository.init(local, PASSWORD, kdf=FAST_KDF, object_lock=ObjectLockConfig("compliance", 30))
    assert not (tmp_path / "repo" / "config").exists()


def test_a_copy_in_storage_without_object_lock_opens_and_says_so() -> None:
    """A locked repository copied into a directory (rclone, aws s3 sync) is still readable."""
    locked = MemoryBackend(object_lock=True)
    _init(locked).close()
    copy = MemoryBackend()
    for ftype in FileType:
        for name, _size in locked.list(ftype):
            copy.save(ftype, name, locked.load(ftype, name))
    warnings: list[str] = []
    repo = Repository.open(copy, PASSWORD, warn=warnings.append)
    assert repo.config.object_lock is not None
    repo.load_index()
    for when in (1, 2):
        tree = repo.save_tree([])
        repo.flush()
        repo.save_snapshot(Snapshot(time_ns=when, host="h", user="u", uid=0, gid=0, paths=["/"], tags=[], tree=tree))
    assert len(warnings) == 1 and "new files are not protected" in warnings[0] and "does not offer" in warnings[0]
    assert len(list(copy.list(FileType.SNAPSHOT))) == 2
    repo.close()
