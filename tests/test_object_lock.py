"""Object Lock in the repository, on the memory backend's imitation of S3 Object Lock with a
clock the tests move: the config, retention on writes, extension by backups, and prune and
forget on a repository where some deletes are refused. The same rules against a real Ceph RGW:
tests/backends/test_object_lock.py."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from supersede import supersede_everything, undo

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.backends.memory import MemoryBackend
from backupfs.cli.forget import _remove as forget_remove
from backupfs.errors import BackendError, BackupfsError, IntegrityError, UsageError
from backupfs.format.config import ConfigBody, ConfigHeader, ObjectLockConfig
from backupfs.format.index import IndexFile
from backupfs.format.pack import DATA
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import FILE, Node
from backupfs.ops.check import Checker
from backupfs.prune.execute import execute
from backupfs.prune.options import MaxUnused, PruneOptions
from backupfs.prune.plan import PrunePlan, plan_prune
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
    body = ConfigBody((1024, 4096, 16384), 1 << 24, "lz4")
    assert msgpack.unpackb(body.encode()) == {"chunker": [1024, 4096, 16384], "pack_size": 1 << 24, "compression": "lz4"}
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
    body = msgpack.packb({"chunker": [1024, 4096, 16384], "pack_size": 1 << 24, "compression": "lz4", "object_lock": value})
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


# ---------------------------------------------------------------- backups keep what they need locked


class CountingBackend(MemoryBackend):
    """Counts the requests that cost money on S3: retention reads (HEAD), extensions (PUT)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(object_lock=True, clock=clock)
        self.reads = 0
        self.extensions = 0

    def retention(self, ftype: FileType, name: str) -> float | None:
        self.reads += 1
        return super().retention(ftype, name)

    def extend_retention(self, ftype: FileType, name: str, until: float) -> None:
        self.extensions += 1
        super().extend_retention(ftype, name, until)


def _open(backend: MemoryBackend, clock: Clock, cache: Path | None) -> Repository:
    repo = Repository.open(backend, PASSWORD, cache_dir=str(cache) if cache else None)
    repo.clock = clock
    repo.load_index()
    return repo


def _snapshot(repo: Repository, files: dict[str, bytes], clock: Clock) -> str:
    """A snapshot of `files`; each new file's one chunk goes into a pack (and index file) of its
    own, so that what a snapshot needs and what it does not are different files."""
    nodes = []
    for name, content in sorted(files.items()):
        blob_id, _added = repo.save_blob(DATA, content)
        repo.flush()
        nodes.append(Node(name=name.encode(), type=FILE, size=len(content), content=[(0, blob_id)]))
    tree = repo.save_tree(nodes)
    repo.flush()
    snap = Snapshot(time_ns=int(clock() * 1e9), host="h", user="u", paths=["/"], tree=tree)
    return repo.save_snapshot(snap)


def _needed(repo: Repository, sid: str, index: dict[str, IndexFile] | None = None) -> dict[tuple[FileType, str], float]:
    """Every file a snapshot needs (format.md 13) with its retain-until date."""
    snap = repo.load_snapshot(sid)
    packs = repo.packs_of_tree(snap.tree)
    files = [(FileType.SNAPSHOT, sid), (FileType.CONFIG, "config")]
    files += [(FileType.DATA, p.hex()) for p in packs]
    files += [(FileType.KEY, n) for n, _ in repo.backend.list(FileType.KEY)]
    for name, idx in (repo.index_files() if index is None else index).items():
        if any(p in packs for p in idx.packs):
            files.append((FileType.INDEX, name))
    lock = repo.backend
    assert isinstance(lock, MemoryBackend)
    return {f: lock.retention(*f) or 0.0 for f in files}


def test_a_backup_extends_only_what_its_snapshot_needs(tmp_path: Path) -> None:
    clock = Clock()
    backend = CountingBackend(clock)
    _init(backend).close()
    repo = _open(backend, clock, tmp_path / "cache")
    first = _snapshot(repo, {"a": b"kept in every snapshot", "b": b"only in the first"}, clock)
    written = T0 + 37 * DAY
    before = _needed(repo, first)
    assert set(before.values()) == {written}
    repo.close()

    clock.now = T0 + 20 * DAY  # a later backup that no longer has b
    backend.reads = backend.extensions = 0
    repo = _open(backend, clock, tmp_path / "cache")
    second = _snapshot(repo, {"a": b"kept in every snapshot"}, clock)
    reads, extensions = backend.reads, backend.extensions
    needed = _needed(repo, second)
    assert all(until >= clock.now + 30 * DAY for until in needed.values())
    extended = {f for f, until in needed.items() if f in before and until == clock.now + 37 * DAY}
    # a's pack and its index file, the key and the config; b's pack and index file untouched
    kinds = sorted(f[0].value for f in extended)
    assert kinds == ["config", "data", "index", "keys"], kinds
    stats = repo.retention_stats
    assert stats is not None and stats.extended == extensions == 4
    assert stats.checked == reads == 0  # every date was on record (the cache folder)
    for f, until in _needed(repo, first).items():
        if f not in needed:
            assert until == written, f  # b's files: left to expire
    repo.close()


def test_a_host_without_a_record_reads_the_dates_once() -> None:
    clock = Clock()
    backend = CountingBackend(clock)
    _init(backend).close()
    repo = _open(backend, clock, None)
    _snapshot(repo, {"a": b"a", "b": b"b"}, clock)
    repo.close()
    clock.now += DAY
    repo = _open(backend, clock, None)  # another host, or --no-cache: nothing on record
    backend.reads = backend.extensions = 0
    sid = _snapshot(repo, {"a": b"a", "b": b"b"}, clock)
    reads, extensions = backend.reads, backend.extensions
    stats = repo.retention_stats
    assert stats is not None and stats.extended == extensions == 0
    assert stats.checked == reads == stats.files == len(_needed(repo, sid)) - 1  # all but the snapshot
    repo.close()


def test_daily_backups_keep_the_promise_with_one_extension_a_week() -> None:
    """Sixty daily backups of a slowly changing set of files: at every backup, every snapshot
    younger than the retention has all it needs locked until its time + DAYS; a file in use is
    extended about once a step (7 days), not daily. The measured numbers are in docs."""
    clock = Clock()
    backend = CountingBackend(clock)
    _init(backend).close()
    repo = _open(backend, clock, None)
    snapshots: list[tuple[float, str]] = []
    extensions_per_file: dict[tuple[FileType, str], int] = {}
    real_extend = backend.extend_retention

    def count(ftype: FileType, name: str, until: float) -> None:
        extensions_per_file[(ftype, name)] = extensions_per_file.get((ftype, name), 0) + 1
        real_extend(ftype, name, until)

    backend.extend_retention = count  # type: ignore[method-assign]
    for day in range(60):
        clock.now = T0 + day * DAY
        files = {f"f{i}": b"content %d" % i for i in range(day // 3, day // 3 + 10)}  # one new every 3 days
        snapshots.append((clock.now, _snapshot(repo, files, clock)))
        index = repo.index_files()
        for when, sid in snapshots:
            if when > clock.now - 30 * DAY:
                for f, until in _needed(repo, sid, index).items():
                    assert until >= when + 30 * DAY, (day, sid[:8], f)
    always = extensions_per_file[(FileType.CONFIG, "config")]
    assert 60 / 7 - 1 <= always <= 60 / 6 + 1, always  # about once a step, never daily
    assert max(extensions_per_file.values()) == always
    repo.close()


def test_a_snapshot_is_saved_even_when_extending_fails() -> None:
    clock = Clock()
    backend = CountingBackend(clock)
    _init(backend).close()
    repo = _open(backend, clock, None)
    _snapshot(repo, {"a": b"a"}, clock)
    clock.now += 20 * DAY

    def refuse(ftype: FileType, name: str, until: float) -> None:
        raise BackendError(f"extend retention of {ftype.value}/{name}: access denied")

    backend.extend_retention = refuse  # type: ignore[method-assign]
    with pytest.raises(BackupfsError, match=r"^snapshot [0-9a-f]{8} saved, but the files it needs could not all"):
        _snapshot(repo, {"a": b"a"}, clock)
    assert len(list(backend.list(FileType.SNAPSHOT))) == 2
    repo.close()


# ---------------------------------------------------------------- prune and forget under the lock


def _files(backend: MemoryBackend, ftype: FileType) -> set[str]:
    return {n for n, _ in backend.list(ftype)}


def _consistent(repo: Repository) -> None:
    """Every pack an index in force names exists, and every blob of every snapshot is indexed
    and reads back (check --read-data finds nothing)."""
    repo.load_index()
    present = _files(repo.backend, FileType.DATA)  # type: ignore[arg-type]
    assert {p.hex() for p in repo.index.pack_ids()} <= present
    result = Checker(repo).run(read_data=True)
    assert result.errors == [], result.errors


def _prune(repo: Repository) -> PrunePlan:
    repo.load_index()
    plan = plan_prune(repo, PruneOptions(max_unused=MaxUnused(0.0)))
    execute(plan)
    return plan


def test_prune_deletes_only_what_has_passed_its_retention() -> None:
    clock = Clock()
    backend = MemoryBackend(object_lock=True, clock=clock)
    _init(backend).close()
    repo = _open(backend, clock, None)
    blob_a, _ = repo.save_blob(DATA, b"a" * 1000)
    blob_b, _ = repo.save_blob(DATA, b"b" * 1000)  # a and b share a pack
    repo.flush()
    blob_c, _ = repo.save_blob(DATA, b"c" * 1000)
    repo.flush()
    nodes = [
        Node(name=n, type=FILE, size=1000, content=[(0, b)])
        for n, b in ((b"a", blob_a), (b"b", blob_b), (b"c", blob_c))
    ]
    tree = repo.save_tree(nodes)
    repo.flush()
    first = repo.save_snapshot(Snapshot(time_ns=int(clock() * 1e9), host="h", user="u", paths=["/"], tree=tree))
    pack_ab = repo.index.lookup(blob_a).pack_id.hex()  # type: ignore[union-attr]
    pack_c = repo.index.lookup(blob_c).pack_id.hex()  # type: ignore[union-attr]
    clock.now = T0 + 10 * DAY
    _snapshot(repo, {"a": b"a" * 1000}, clock)  # needs a: extends the a+b pack to day 47
    orphan = Repository.open(backend, PASSWORD)  # a backup killed before its index: a pack in no index
    orphan.clock = clock
    orphan.save_blob(DATA, b"orphan" * 100)
    assert orphan._packer is not None
    orphan._packer.flush()
    orphan.close()
    orphaned = _files(backend, FileType.DATA) - {p.hex() for p in repo.index.pack_ids()}
    assert len(orphaned) == 1
    repo.close()

    clock.now = T0 + 38 * DAY  # the first snapshot's files passed their retention (day 37)
    repo = _open(backend, clock, None)
    backend.remove(FileType.SNAPSHOT, first)
    plan = _prune(repo)
    assert pack_c not in _files(backend, FileType.DATA)  # nothing in use, lock passed: deleted
    assert pack_ab in _files(backend, FileType.DATA)  # b unused, but locked until day 47: kept ...
    repo.load_index()
    assert bytes.fromhex(pack_ab) in repo.index.pack_ids()  # ... and still indexed
    assert orphaned <= _files(backend, FileType.DATA)  # written on day 10: locked until day 47
    assert {k: (h.count, h.earliest) for k, h in plan.held.kinds.items() if k != "index"} == {
        "repack": (1, T0 + 47 * DAY),
        "unindexed": (1, T0 + 47 * DAY),
    }
    assert plan.held.kinds["index"].count >= 1  # the a+b pack's old index file: superseded, kept
    _consistent(repo)

    clock.now = T0 + 48 * DAY  # every lock of the first snapshot's files has passed
    plan = _prune(repo)
    # all that is left for later is the index file the first prune wrote (locked until day 75)
    assert {k: (h.count, h.earliest) for k, h in plan.held.kinds.items()} == {"index": (1, T0 + 75 * DAY)}
    assert pack_ab not in _files(backend, FileType.DATA) and not orphaned & _files(backend, FileType.DATA)
    _consistent(repo)
    repo.close()


def test_forget_keeps_a_locked_snapshot_and_prune_keeps_its_data() -> None:
    """A snapshot the storage will not delete yet is not forgotten for prune either."""
    clock = Clock()
    backend = MemoryBackend(object_lock=True, clock=clock)
    _init(backend).close()
    repo = _open(backend, clock, None)
    sid = _snapshot(repo, {"x": b"x" * 1000}, clock)
    removed, held = forget_remove(repo, [sid], dict(repo.list_snapshots()), dry_run=False)
    assert removed == [] and held.kinds["snapshots"].count == 1
    assert held.kinds["snapshots"].earliest == T0 + 37 * DAY
    assert sid in _files(backend, FileType.SNAPSHOT)
    plan = plan_prune(repo, ignore_snapshots=removed)
    assert not plan.delete and not plan.repack
    repo.close()


def test_a_superseding_index_cannot_make_prune_delete_locked_data() -> None:
    """Issue 10's attack on a locked repository: someone with the password uploads a garbage pack
    and an index that supersedes every index file, claiming every data blob for the garbage.
    The real packs then look like left-overs in no index; prune must delete none of them."""
    clock = Clock()
    backend = MemoryBackend(object_lock=True, clock=clock)
    _init(backend).close()
    repo = _open(backend, clock, None)
    sid = _snapshot(repo, {"x": b"x" * 1000, "y": b"y" * 1000}, clock)
    before = {t: {n: backend.load(t, n) for n in _files(backend, t)} for t in (FileType.DATA, FileType.INDEX)}
    forged = supersede_everything(repo)
    clock.now += 5 * DAY
    plan = _prune(repo)
    for ftype, files in before.items():
        for name, data in files.items():
            assert backend.load(ftype, name) == data, f"{ftype.value}/{name} was lost"
    # the real packs are seen for what they are (data in use, listed again where no index lists
    # them: architecture.md 5) and kept; only the forged pack is garbage, and it is locked
    assert set(before[FileType.DATA]) <= {p.id.hex() for p in plan.keep}
    assert plan.reindexed and not plan.delete and not plan.unindexed
    assert plan.held.kinds["unused"].count == 1
    undo(repo, list(before[FileType.INDEX]), forged)
    repo.load_index()
    snap = repo.load_snapshot(sid)
    assert [repo.load_blob(DATA, n.content[0][1]) for n in repo.load_tree_as_stored(snap.tree) if n.content] == [
        b"x" * 1000,
        b"y" * 1000,
    ]
    repo.close()


def test_a_damaged_record_of_dates_is_ignored(tmp_path: Path) -> None:
    """The local record is authenticated: flipped bits (or another repository's record) are
    ignored and the dates read from the storage again, never trusted."""
    clock = Clock()
    backend = CountingBackend(clock)
    _init(backend).close()
    repo = _open(backend, clock, tmp_path)
    _snapshot(repo, {"a": b"a"}, clock)
    repo.close()
    (record,) = tmp_path.glob("*/retention.cache")
    data = bytearray(record.read_bytes())
    data[len(data) // 2] ^= 1
    record.write_bytes(bytes(data))
    clock.now += 25 * DAY
    backend.reads = 0
    repo = _open(backend, clock, tmp_path)
    sid = _snapshot(repo, {"a": b"a"}, clock)
    stats = repo.retention_stats
    reads = backend.reads
    assert stats is not None and stats.checked > 0 and stats.checked == reads
    assert all(until >= clock.now + 30 * DAY for until in _needed(repo, sid).values())
    repo.close()
