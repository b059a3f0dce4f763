"""The master index is published whole (issue 10): the mount's worker threads look blobs up
without a lock while the index is reloaded or compacted, so every state they can reach must
answer every lookup correctly.

A reader thread can be preempted between any two steps of the writer, but what it reads changes
only when the writer assigns an attribute of the index (or of the repository, `repo.index`). The
deterministic tests therefore check every lookup after each such assignment on the index that
readers can reach; a thread test then hammers lookups during real reloads.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backupfs.backends.base import FileType
from backupfs.backends.memory import MemoryBackend
from backupfs.format.pack import DATA, PackEntry
from backupfs.repository.masterindex import BlobLocation, MasterIndex
from backupfs.repository.repo import Repository

PW = b"pw"
FAST_KDF = (1, 8192)

Expected = dict[bytes, set[BlobLocation]]


def _check(index: MasterIndex, expected: Expected, when: str) -> None:
    wrong = [bid.hex()[:16] for bid, places in expected.items() if index.lookup(bid) not in places]
    assert not wrong, f"{when}: {len(wrong)} of {len(expected)} blobs not found where indexed, e.g. {wrong[:3]}"


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[], object], Expected], list[str]]]:
    """watch(published, expected): from now on (until the next call), after every attribute
    assignment on the index `published()` returns, all of `expected` must be found; returns the
    assignments seen."""
    seen: list[str] = []
    watched: list[tuple[Callable[[], object], Expected]] = []

    def setattr_and_check(obj: MasterIndex, name: str, value: object) -> None:
        object.__setattr__(obj, name, value)
        for published, expected in watched:
            if obj is published():
                seen.append(name)
                _check(obj, expected, f"after {name} was assigned")

    monkeypatch.setattr(MasterIndex, "__setattr__", setattr_and_check)

    def start(published: Callable[[], object], expected: Expected) -> list[str]:
        watched[:] = [(published, expected)]
        return seen

    yield start


def _entries(rng: random.Random, n: int, base: int) -> list[PackEntry]:
    return [PackEntry(DATA, rng.randbytes(32), base + 10 * i, 10, 8) for i in range(n)]


def test_compaction_never_shows_readers_a_torn_index(watch: Callable[[Callable[[], object], Expected], list[str]]) -> None:
    rng = random.Random(1)
    packs = [(rng.randbytes(32), _entries(rng, 200, 0)) for _ in range(10)]
    index = MasterIndex.build(packs)
    added = [(rng.randbytes(32), _entries(rng, 100, 0)) for _ in range(5)]
    for pack_id, entries in added:
        index.add_pack(pack_id, entries)  # the overlay: blobs saved while the process runs
    expected: Expected = {
        e.id: {BlobLocation(pid, e.type, e.offset, e.length, e.raw_length)} for pid, es in packs + added for e in es
    }
    _check(index, expected, "before compaction")
    seen = watch(lambda: index, expected)
    index.compact()
    assert seen, "compaction assigned nothing: the check above saw no new state"
    _check(index, expected, "after compaction")
    table = index.to_table()
    assert table.count == len(expected)


def _save_index_files(repo: Repository, files: int, blobs: int, rng: random.Random) -> None:
    for _ in range(files):
        for _ in range(blobs):
            repo.save_blob(DATA, rng.randbytes(64))
        repo.flush()  # one index file each


def _expected(repo: Repository) -> Expected:
    files = repo.index_files()
    superseded = {s for f in files.values() for s in f.supersedes}
    out: Expected = {}
    for name, f in files.items():
        if bytes.fromhex(name) not in superseded:
            for pid, entries in f.packs.items():
                for e in entries:
                    out.setdefault(e.id, set()).add(BlobLocation(pid, e.type, e.offset, e.length, e.raw_length))
    return out


def test_load_index_publishes_a_complete_compacted_index(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    watch: Callable[[Callable[[], object], Expected], list[str]],
) -> None:
    """From the cache plus many new index files (so the cache is rewritten, which compacts):
    the index a reader can reach through `repo.index` is complete from the moment it is there."""
    rng = random.Random(2)
    backend = MemoryBackend()
    writer = Repository.init(backend, PW, kdf=FAST_KDF, pack_size=1 << 20)
    _save_index_files(writer, 3, 50, rng)
    reader = Repository.open(backend, PW, cache_dir=str(tmp_path / "cache"))
    reader.load_index()  # builds the cache
    published: list[Expected] = []

    def set_repo_attr(obj: Repository, name: str, value: object) -> None:
        object.__setattr__(obj, name, value)
        if obj is reader and name == "index":
            assert isinstance(value, MasterIndex)
            _check(value, published[-1], "when repo.index was assigned")

    monkeypatch.setattr(Repository, "__setattr__", set_repo_attr)
    for _round in range(2):  # a first load, then a reload of a repository already in use
        _save_index_files(writer, 18, 5, rng)  # more than the cache takes without a rewrite
        expected = _expected(writer)
        published.append(expected)
        watch(lambda: reader.index, expected)
        reader.load_index()
        _check(reader.index, expected, "after load_index")
    assert len(list(backend.list(FileType.INDEX))) == 3 + 36
    writer.close()
    reader.close()


def test_lookups_from_threads_during_reloads(tmp_path: Path) -> None:
    """The mount's situation, for real: reader threads look up every blob, without a lock, while
    the index is reloaded again and again (from the cache and new index files, compacting)."""
    rng = random.Random(3)
    backend = MemoryBackend()
    writer = Repository.init(backend, PW, kdf=FAST_KDF, pack_size=1 << 20)
    _save_index_files(writer, 2, 200, rng)
    reader = Repository.open(backend, PW, cache_dir=str(tmp_path / "cache"))
    reader.load_index()
    expected = _expected(writer)  # blobs known from the start stay where they are throughout
    stop = threading.Event()
    passes = [0, 0]
    errors: list[str] = []

    def hammer(k: int) -> None:
        ids = list(expected)
        while not stop.is_set():
            for bid in ids:
                try:
                    if reader.index.lookup(bid) not in expected[bid]:
                        errors.append(f"{bid.hex()[:16]} not found where indexed")
                except Exception as exc:  # a torn index can also raise (an index past the end)
                    errors.append(f"{bid.hex()[:16]}: {exc!r}")
            passes[k] += 1

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: many interleavings
    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(2)]
    try:
        for t in threads:
            t.start()
        for _round in range(6):
            _save_index_files(writer, 17, 2, rng)
            before = list(passes)
            reader.load_index()
            reader.index.compact()
            while passes == before and all(t.is_alive() for t in threads):
                stop.wait(0.001)  # let the readers finish at least one pass on this index
    finally:
        stop.set()
        sys.setswitchinterval(old_interval)
        for t in threads:
            t.join()
        writer.close()
        reader.close()
    assert not errors, f"{len(errors)} lookups went wrong, e.g. {errors[:3]}"
    assert all(passes), passes
