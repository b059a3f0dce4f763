"""The compact master index and its local cache: correct, current, and never trusted blindly."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.crypto import file_id
from backupfs.format.pack import DATA, PackEntry
from backupfs.repository.filecache import FileCache
from backupfs.repository.masterindex import MasterIndex
from backupfs.repository.repo import Repository

PW = b"pw"
FAST_KDF = (1, 8192)


def _repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(str(tmp_path / "repo")), PW, kdf=FAST_KDF, pack_size=1 << 20)


def _open(tmp_path: Path, cache: bool = True) -> Repository:
    repo = Repository.open(LocalBackend(str(tmp_path / "repo")), PW, cache_dir=str(tmp_path / "cache") if cache else None)
    repo.load_index()
    return repo


def _save(repo: Repository, n: int, seed: int) -> list[bytes]:
    ids = [repo.save_blob(DATA, f"blob {seed} {i}".encode() * 50)[0] for i in range(n)]
    repo.flush()
    return ids


def test_compact_index_finds_every_blob_and_nothing_else() -> None:
    packs = [(os.urandom(32), [PackEntry(DATA, os.urandom(32), i * 10, 10, 20) for i in range(300)]) for _ in range(50)]
    # ids sharing a two-byte prefix and the extremes of the key space
    packs.append((b"p" * 32, [PackEntry(DATA, b"\x00" * 32, 0, 1, 1), PackEntry(DATA, b"\xff" * 32, 1, 1, 1)]))
    packs.append((b"q" * 32, [PackEntry(DATA, b"\x12\x34" + bytes([i]) * 30, i, 1, 1) for i in range(40)]))
    idx = MasterIndex.build(packs)
    for pack_id, entries in packs:
        for e in entries:
            loc = idx.lookup(e.id)
            assert loc is not None and (loc.pack_id, loc.offset, loc.length) == (pack_id, e.offset, e.length)
    assert all(idx.lookup(os.urandom(32)) is None for _ in range(200))
    assert idx.lookup(b"\x12\x34" + b"\x99" * 30) is None
    # a round trip through the cache's table form keeps everything
    again = MasterIndex.from_table(idx.to_table())
    assert len(again) == len(idx)
    assert all(again.lookup(bid) == loc for bid, loc in idx.items())


def test_cache_is_used_extended_and_verified(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    first = _save(repo, 30, 1)
    repo.close()

    r1 = _open(tmp_path)
    assert all(b in r1.index for b in first)
    cache_file = tmp_path / "cache" / r1.header.repo_id.hex() / "index.cache"
    assert cache_file.exists() and (cache_file.stat().st_mode & 0o777) == 0o600
    r1.close()

    # The cache now answers for the covered index files without reading them: prove it by
    # making those files unreadable garbage; the cached lookups still work.
    index_dir = tmp_path / "repo" / "index"
    originals = {p: p.read_bytes() for p in index_dir.iterdir()}
    for p in originals:
        p.write_bytes(b"garbage")
    r2 = _open(tmp_path)
    assert all(b in r2.index for b in first)
    # new index files are read and overlaid
    second = _save(r2, 10, 2)
    r2.close()
    r3 = _open(tmp_path)
    assert all(b in r3.index for b in first + second)
    r3.close()
    for p, data in originals.items():
        p.write_bytes(data)

    # a tampered cache is detected and rebuilt from the repository
    data = bytearray(cache_file.read_bytes())
    data[len(data) // 2] ^= 1
    cache_file.write_bytes(bytes(data))
    r4 = _open(tmp_path)
    assert all(b in r4.index for b in first + second)
    assert r4.index.lookup(first[0]) is not None
    r4.close()


def test_superseding_index_invalidates_cache(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    ids = _save(repo, 20, 3)
    repo.close()
    r1 = _open(tmp_path)
    assert ids[0] in r1.index
    # rewrite the index as prune would: one file superseding all, listing only some packs
    files = r1.index_files()
    keep: dict[bytes, list[PackEntry]] = {}
    dropped = None
    for f in files.values():
        for pack_id, entries in f.packs.items():
            if dropped is None and any(e.id == ids[0] for e in entries):
                dropped = pack_id
                continue
            keep[pack_id] = entries
    r1.save_index(keep, supersedes=[bytes.fromhex(n) for n in files])
    r1.close()
    r2 = _open(tmp_path)
    assert ids[0] not in r2.index
    assert dropped is not None and dropped not in r2.index.pack_ids()
    r2.close()


@pytest.mark.parametrize("cache", [True, False])
def test_blob_roundtrip_through_index(tmp_path: Path, cache: bool) -> None:
    repo = _repo(tmp_path)
    ids = _save(repo, 5, 4)
    repo.close()
    r = _open(tmp_path, cache)
    assert r.load_blob(DATA, ids[2]) == b"blob 4 2" * 50
    assert sum(1 for _ in r.backend.list(FileType.INDEX)) >= 1
    r.close()


def test_file_cache_serves_snapshots_and_trees_and_is_verified(tmp_path: Path) -> None:
    from backupfs.format.snapshot import Snapshot

    repo = _repo(tmp_path)
    tree_id = repo.save_tree([])
    repo.flush()
    snap_id = repo.save_snapshot(Snapshot(time_ns=1, host="h", user="u", paths=["/x"], tree=tree_id))
    repo.close()

    def open_cached() -> Repository:
        r = Repository.open(LocalBackend(str(tmp_path / "repo")), PW, cache_dir=str(tmp_path / "c"), cache_files=True)
        r.load_index()
        return r

    r1 = open_cached()
    assert [sid for sid, _ in r1.list_snapshots()] == [snap_id]
    assert r1.load_tree(tree_id) == []
    r1.close()
    cache_root = tmp_path / "c" / r1.header.repo_id.hex()
    cached_snap = cache_root / "snapshots" / snap_id
    cached_packs = list((cache_root / "data").iterdir())
    assert cached_snap.exists() and len(cached_packs) == 1
    # a damaged cached copy is detected (hash) and fetched again
    cached_snap.write_bytes(b"rot")
    r2 = open_cached()
    assert r2.load_snapshot(snap_id).paths == ["/x"]
    r2.close()
    assert cached_snap.read_bytes() != b"rot"
    # a forgotten snapshot leaves the cache too
    (tmp_path / "repo" / "snapshots" / snap_id).unlink()
    r3 = open_cached()
    assert r3.list_snapshots() == []
    r3.close()
    assert not cached_snap.exists()


def test_damaged_cached_tree_pack_is_refetched(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    tree_id = repo.save_tree([])
    repo.flush()
    repo.close()
    r1 = Repository.open(LocalBackend(str(tmp_path / "repo")), PW, cache_dir=str(tmp_path / "c"), cache_files=True)
    r1.load_index()
    r1.load_tree(tree_id)
    (pack,) = (tmp_path / "c" / r1.header.repo_id.hex() / "data").iterdir()
    raw = bytearray(pack.read_bytes())
    raw[10] ^= 0xFF
    pack.write_bytes(bytes(raw))
    r1._tree_cache.clear()
    assert r1.load_tree(tree_id) == []
    r1.close()


def test_threads_storing_one_cache_file_use_their_own_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads of one process store the same cached snapshot at once, both having written
    their temporary before either moves it into place (a barrier in os.replace, which still does
    the move). With one temporary name per process, the second move found nothing: its file had
    been moved by the first, which could thus have put a half-written file in place."""
    cache = FileCache(str(tmp_path / "cache"), b"\1" * 32)
    data = os.urandom(100_000)
    name = file_id(data)
    both_written = threading.Barrier(2, timeout=30)
    real_replace = os.replace
    moved: list[str] = []
    failed: list[str] = []

    def replace(src: str, dst: str) -> None:
        both_written.wait()
        try:
            real_replace(src, dst)
        except OSError as exc:
            failed.append(f"{src}: {exc}")
            raise
        moved.append(src)

    monkeypatch.setattr(os, "replace", replace)
    threads = [threading.Thread(target=cache.put, args=(FileType.SNAPSHOT, name, data)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.undo()
    assert not failed and len(set(moved)) == 2, (moved, failed)
    assert cache.get(FileType.SNAPSHOT, name) == data
    assert os.listdir(tmp_path / "cache" / ("01" * 32) / "snapshots") == [name]  # no temporary left
