"""The Backend contract (backupfs/backends/base.py), checked on every backend over real servers.

Each test runs against memory, local (a tmp dir), sftp (a real OpenSSH sshd, through the
system's ssh client), sftp-paramiko (the same sshd, through paramiko), s3 (a real moto server),
rgw (a real Ceph cluster's S3 gateway) and rest (a real `backupfs serve`), each opened through
open_backend and so wrapped in RetryBackend, as in use.
"""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import blake3
import pytest

from backupfs.backends import layout
from backupfs.backends.base import Backend, BackendInfo, FileType
from backupfs.backends.counting import innermost
from backupfs.errors import AlreadyExists, BackendError, NotFound

from .factory import BackendFactory

NON_CONFIG = [t for t in FileType if t is not FileType.CONFIG]
MiB = 1024 * 1024


def file_id(data: bytes) -> str:
    """Repository file names are the BLAKE3 of the content (format.md 2); the rest server checks it."""
    return str(blake3.blake3(data).hexdigest())


def data_named(prefix: str) -> bytes:
    """Content whose name starts with `prefix` (found by counting: ~256 tries for two digits)."""
    i = 0
    while not file_id(b"%d" % i).startswith(prefix):
        i += 1
    return b"%d" % i


def put(backend: Backend, ftype: FileType, data: bytes) -> str:
    name = "config" if ftype is FileType.CONFIG else file_id(data)
    backend.save(ftype, name, data)
    return name


def test_create_and_exists(make_backend: BackendFactory) -> None:
    fresh = make_backend(create=False)
    assert not fresh.exists()
    fresh.create()
    assert not fresh.exists()  # the layout alone is not a repository: init writes the config
    fresh.create()  # a half-done init can be repeated
    fresh.save(FileType.CONFIG, "config", b"config bytes")
    assert fresh.exists()
    with pytest.raises(AlreadyExists):
        fresh.create()
    assert fresh.load(FileType.CONFIG, "config") == b"config bytes"


WITH_DIRECTORIES = pytest.mark.parametrize("make_backend", ["local", "sftp"], indirect=True)


@WITH_DIRECTORIES
def test_create_makes_the_layout(make_backend: BackendFactory) -> None:
    make_backend()
    root = make_backend.fs_root
    assert root is not None
    assert sorted(p.name for p in root.iterdir()) == ["data", "index", "keys", "locks", "snapshots", "verify"]
    assert sorted(p.name for p in (root / "data").iterdir()) == [f"{i:02x}" for i in range(256)]


@pytest.mark.parametrize("ftype", list(FileType), ids=lambda t: t.value)
def test_roundtrip_every_type(backend: Backend, ftype: FileType) -> None:
    data = os.urandom(3000) + ftype.value.encode()
    name = put(backend, ftype, data)
    assert backend.load(ftype, name) == data
    assert backend.stat(ftype, name) == len(data)
    assert list(backend.list(ftype)) == [(name, len(data))]
    for other in FileType:
        if other is not ftype:
            # missing, or (config vs. a file id) not even a name that type can have
            with pytest.raises(NotFound if layout.is_valid_name(other, name) else BackendError):
                backend.load(other, name)


def test_empty_file(backend: Backend) -> None:
    name = put(backend, FileType.LOCK, b"")
    assert backend.load(FileType.LOCK, name) == b""
    assert backend.load(FileType.LOCK, name, 0, 0) == b""
    assert backend.stat(FileType.LOCK, name) == 0
    assert list(backend.list(FileType.LOCK)) == [(name, 0)]


def test_large_data_and_ranged_loads(backend: Backend) -> None:
    data = random.Random(1).randbytes(20 * MiB + 12345)
    name = put(backend, FileType.DATA, data)
    assert backend.load(FileType.DATA, name) == data
    size = len(data)
    for offset, length in [
        (0, 1),
        (1, 100),
        (32767, 2),  # across a 32 KiB request boundary
        (131071, 131074),  # across 128 KiB boundaries
        (5 * MiB + 7, 3 * MiB),  # a pipelined range
        (size - 100, 100),  # the very end
        (size, 0),
        (123, 0),
    ]:
        assert backend.load(FileType.DATA, name, offset, length) == data[offset : offset + length], (offset, length)
    assert backend.load(FileType.DATA, name, 10 * MiB + 3) == data[10 * MiB + 3 :]
    for offset in (size - 1000, size - 1, size):
        assert backend.load(FileType.DATA, name, offset) == data[offset:], offset
        assert backend.load(FileType.DATA, name, offset, None) == data[offset:], offset


def test_small_file_ranged_loads(backend: Backend) -> None:
    data = bytes(range(256)) * 4
    name = put(backend, FileType.INDEX, data)
    for offset in range(0, len(data), 97):
        for length in (1, 7, len(data) - offset):
            assert backend.load(FileType.INDEX, name, offset, length) == data[offset : offset + length]


def test_missing_files_are_not_found(backend: Backend) -> None:
    name = file_id(b"never saved")
    for ftype in NON_CONFIG:
        with pytest.raises(NotFound):
            backend.load(ftype, name)
        with pytest.raises(NotFound):
            backend.load(ftype, name, 10, 20)
        with pytest.raises(NotFound):
            backend.stat(ftype, name)
        with pytest.raises(NotFound):
            backend.remove(ftype, name)
        assert list(backend.list(ftype)) == []
    with pytest.raises(NotFound):
        backend.load(FileType.CONFIG, "config")
    assert list(backend.list(FileType.CONFIG)) == []


def test_short_read_is_a_backend_error(backend: Backend) -> None:
    data = os.urandom(1000)
    name = put(backend, FileType.DATA, data)
    for offset, length in [(0, 1001), (990, 11), (1000, 1), (5000, 10), (1, 1 * MiB)]:
        with pytest.raises(BackendError) as info:
            backend.load(FileType.DATA, name, offset, length)
        assert not isinstance(info.value, NotFound), (offset, length)
        assert "short read" in str(info.value)


def test_list_names_and_sizes(backend: Backend, make_backend: BackendFactory) -> None:
    expected: dict[FileType, set[tuple[str, int]]] = {t: set() for t in NON_CONFIG}
    rng = random.Random(2)
    for ftype in NON_CONFIG:
        for i in range(20 if ftype is FileType.DATA else 4):
            data = rng.randbytes(rng.randrange(0, 5000)) + bytes([i])
            expected[ftype].add((put(backend, ftype, data), len(data)))
    # data files land in many fan-out folders; make sure both ends of the range are used
    for prefix in ("00", "ff"):
        data = data_named(prefix)
        expected[FileType.DATA].add((put(backend, FileType.DATA, data), len(data)))
    if make_backend.fs_root is not None:  # leftovers of killed writers must stay invisible
        (make_backend.fs_root / "data" / "ab" / ".abcdef.tmp-123-456").write_bytes(b"partial")
        (make_backend.fs_root / "keys" / ".0123.tmp-1-2").write_bytes(b"partial")
        (make_backend.fs_root / ".config.tmp-1-2").write_bytes(b"partial")
    for ftype in NON_CONFIG:
        listed = list(backend.list(ftype))
        assert len(listed) == len(set(listed)), f"duplicates in {ftype}"
        assert set(listed) == expected[ftype], ftype
    assert list(backend.list(FileType.CONFIG)) == []
    backend.save(FileType.CONFIG, "config", b"abc")
    assert list(backend.list(FileType.CONFIG)) == [("config", 3)]


def test_remove(backend: Backend) -> None:
    a = put(backend, FileType.SNAPSHOT, b"a")
    b = put(backend, FileType.SNAPSHOT, b"b")
    backend.remove(FileType.SNAPSHOT, a)
    with pytest.raises(NotFound):
        backend.load(FileType.SNAPSHOT, a)
    with pytest.raises(NotFound):
        backend.remove(FileType.SNAPSHOT, a)
    assert list(backend.list(FileType.SNAPSHOT)) == [(b, 1)]
    d = put(backend, FileType.DATA, b"data")
    backend.remove(FileType.DATA, d)
    assert list(backend.list(FileType.DATA)) == []


def test_saving_an_existing_name_replaces_it(backend: Backend) -> None:
    data = b"same content, same name"
    name = put(backend, FileType.INDEX, data)
    backend.save(FileType.INDEX, name, data)
    backend.save(FileType.INDEX, name, memoryview(data))
    assert backend.load(FileType.INDEX, name) == data
    assert list(backend.list(FileType.INDEX)) == [(name, len(data))]


def test_config_is_never_overwritten(backend: Backend) -> None:
    backend.save(FileType.CONFIG, "config", b"first")
    with pytest.raises(AlreadyExists):
        backend.save(FileType.CONFIG, "config", b"second")
    assert backend.load(FileType.CONFIG, "config") == b"first"
    assert backend.stat(FileType.CONFIG, "config") == 5


def test_config_race_has_one_winner(backend: Backend) -> None:
    """Eight simultaneous `init`s: exactly one config is written, the others see AlreadyExists."""
    barrier = threading.Barrier(8)

    def init(i: int) -> bool:
        barrier.wait()
        try:
            backend.save(FileType.CONFIG, "config", b"config %d" % i)
        except AlreadyExists:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(init, range(8)))
    assert won.count(True) == 1
    assert backend.load(FileType.CONFIG, "config") == b"config %d" % won.index(True)


def test_concurrent_saves_and_loads(backend: Backend) -> None:
    """8 threads saving, loading, listing and removing at once on one backend instance."""
    saved: dict[str, bytes] = {}
    lock = threading.Lock()

    def work(worker: int) -> None:
        rng = random.Random(worker)
        mine = []
        for i in range(5):
            size = MiB // 2 + rng.randrange(1000) if i == 0 else rng.randrange(0, 64_000)
            data = rng.randbytes(size)
            name = put(backend, FileType.DATA, data)
            mine.append(name)
            with lock:
                saved[name] = data
                others = random.Random(i).sample(sorted(saved), min(2, len(saved)))
            for other in others:  # files of other threads, in full and in part
                assert backend.load(FileType.DATA, other) == saved[other]
                assert backend.load(FileType.DATA, other, 5, 100) == saved[other][5:105]
        private = put(backend, FileType.DATA, rng.randbytes(1000))  # never shared: safe to remove
        assert {n for n, _ in backend.list(FileType.DATA)} >= {*mine, private}
        backend.remove(FileType.DATA, private)
        with pytest.raises(NotFound):
            backend.load(FileType.DATA, private)

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(work, w) for w in range(8)]:
            future.result()
    assert dict(backend.list(FileType.DATA)) == {n: len(d) for n, d in saved.items()}


def test_invalid_names_are_refused(backend: Backend, make_backend: BackendFactory) -> None:
    """Every method refuses a name no file of its type can have (layout.py), before any I/O."""
    good = file_id(b"x")
    bad_names = [(FileType.KEY, bad) for bad in ("", "a/b", "../x", ".hidden", good[:62], good.upper(), "config")]
    bad_names += [(FileType.DATA, "../../" + good[6:]), (FileType.CONFIG, good), (FileType.CONFIG, "../config")]
    for ftype, bad in bad_names:
        for method, args in (("save", (b"x",)), ("load", ()), ("load", (0, 1)), ("stat", ()), ("remove", ())):
            with pytest.raises(BackendError, match="invalid") as info:
                getattr(backend, method)(ftype, bad, *args)
            assert not isinstance(info.value, NotFound), (ftype, bad)
    assert [list(backend.list(t)) for t in FileType] == [[] for _ in FileType]
    if make_backend.fs_root is not None:
        assert sorted(p.name for p in make_backend.fs_root.iterdir()) == sorted(layout.FOLDERS)


@pytest.mark.parametrize("make_backend", ["local", "sftp", "s3", "rgw", "rest"], indirect=True)
def test_foreign_files_are_not_listed(make_backend: BackendFactory) -> None:
    """Only files the layout can name are listed: a load of anything listed can succeed, and a
    stray or hostile file name never reaches the repository code. `list_foreign` alone names
    them, for check to report."""
    backend = make_backend()
    key = put(backend, FileType.KEY, b"key")
    pack = put(backend, FileType.DATA, data_named("ab"))
    misplaced = file_id(b"misplaced")  # a pack outside its fan-out folder
    folder = "ab" if not misplaced.startswith("ab") else "cd"
    foreign = {
        "keys/README": b"x",
        f"keys/{key.upper()}": b"x",
        f"index/{file_id(b'i')[:62]}": b"x",
        f"data/{folder}/{misplaced}": b"x",
        f"data/{misplaced}": b"x",
        "snapshots/latest": b"x",
    }
    if make_backend.kind in ("s3", "rgw"):
        s3: Any = innermost(backend)
        for rel, data in foreign.items():
            s3._client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}/{rel}", Body=data)
    else:
        assert make_backend.fs_root is not None
        for rel, data in foreign.items():
            (make_backend.fs_root / rel).write_bytes(data)
    assert list(backend.list(FileType.KEY)) == [(key, 3)]
    assert list(backend.list(FileType.DATA)) == [(pack, len(data_named("ab")))]
    assert list(backend.list(FileType.INDEX)) == list(backend.list(FileType.SNAPSHOT)) == []
    # ... but `check` hears of them (a REST server shows repository files only: check runs there)
    expected = [] if make_backend.kind == "rest" else sorted(foreign)
    assert sorted(backend.list_foreign()) == expected


@pytest.mark.parametrize("make_backend", ["local"], indirect=True)
def test_interrupted_local_save_leaves_no_file(make_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that dies mid-file (here: os.write raising) leaves nothing under the final name.

    sftp and s3 get a real connection cut mid-upload in test_failures.py."""
    backend = make_backend()
    data = os.urandom(4 * MiB)
    name = file_id(data)
    real_write = os.write

    class Crash(BaseException):
        """Like the process being killed: nothing in the backend gets to clean up."""

    for exc in (OSError(5, "Input/output error"), Crash()):
        written = 0

        def failing_write(fd: int, buf: bytes | memoryview, exc: BaseException = exc) -> int:
            nonlocal written
            if written >= MiB:
                raise exc
            n = real_write(fd, buf[: 256 * 1024])
            written += n
            return n

        monkeypatch.setattr(os, "write", failing_write)
        with pytest.raises((BackendError, Crash)):
            backend.save(FileType.DATA, name, data)
        monkeypatch.setattr(os, "write", real_write)
        with pytest.raises(NotFound):
            backend.load(FileType.DATA, name)
        assert list(backend.list(FileType.DATA)) == []
    assert make_backend.fs_root is not None
    leftovers = [p for p in (make_backend.fs_root / "data" / name[:2]).iterdir()]
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0].name  # only the crash left one
    backend.save(FileType.DATA, name, data)
    assert backend.load(FileType.DATA, name) == data


@WITH_DIRECTORIES
def test_remove_stale_temporaries(make_backend: BackendFactory) -> None:
    backend = make_backend()
    root = make_backend.fs_root
    assert root is not None
    old = [root / "data" / "ab" / ".ab12.tmp-1-2", root / "keys" / ".k.tmp-1-2", root / ".config.tmp-9"]
    new = root / "index" / ".i.tmp-3-4"
    for path in [*old, new]:
        path.write_bytes(b"partial")
    for path in old:
        os.utime(path, (1_000_000, 1_000_000))
    kept = put(backend, FileType.DATA, b"\xab" * 10)
    assert backend.remove_stale_temporaries(3600) == 3
    assert [p.exists() for p in old] == [False] * 3
    assert new.exists()
    assert backend.load(FileType.DATA, kept) == b"\xab" * 10


INFO = {
    "memory": BackendInfo(local=True, append_only=False, sweeps_temporaries=False),
    "local": BackendInfo(local=True, append_only=False, sweeps_temporaries=True),
    "sftp": BackendInfo(local=False, append_only=False, sweeps_temporaries=True, reads_in_flight=16),
    "sftp-paramiko": BackendInfo(local=False, append_only=False, sweeps_temporaries=True, reads_in_flight=16),
    "s3": BackendInfo(local=False, append_only=False, sweeps_temporaries=False, reads_in_flight=16),
    "rgw": BackendInfo(local=False, append_only=False, sweeps_temporaries=False, reads_in_flight=16),
    "rest": BackendInfo(local=False, append_only=False, sweeps_temporaries=False, reads_in_flight=16),  # append-only: test_server.py
}


def test_info_declares_what_the_backend_is(make_backend: BackendFactory) -> None:
    backend = make_backend(create=False)  # info() is the first call: a remote backend finds out by itself
    info = backend.info()
    assert info == INFO[make_backend.kind]
    assert innermost(backend).info() == info  # type: ignore[attr-defined]  # the wrappers forward
    backend.create()
    if not info.sweeps_temporaries and make_backend.fs_root is not None:  # rest: the server's, out of reach
        stale = make_backend.fs_root / "keys" / ".k.tmp-1-2"
        stale.write_bytes(b"partial")
        os.utime(stale, (1_000_000, 1_000_000))
        assert backend.remove_stale_temporaries(0) == 0 and stale.exists()
    elif not info.sweeps_temporaries:
        assert backend.remove_stale_temporaries(0) == 0
