"""The restore's pack reader (ops/packreader.py) on a real repository in a directory: each run
read once, decrypted blobs held within the budget, a duplicate needed far later dropped and read
again alone, and a blob no plan foresaw or whose pack is gone served as load_blob would."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from backupfs.backends.base import FileType
from backupfs.backends.counting import CountingBackend
from backupfs.backends.local import LocalBackend
from backupfs.errors import PackMissing
from backupfs.format.pack import DATA
from backupfs.ops.packreader import PackReader
from backupfs.repository.repo import Repository

PASSWORD = b"pack reader"
BLOB = 200_000
MiB = 1 << 20


def _repo(tmp_path: Path, blobs: int) -> tuple[Repository, list[bytes], dict[bytes, bytes]]:
    """`blobs` random blobs of BLOB bytes in 1 MiB packs (a handful per pack), indexed."""
    path = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(path), PASSWORD, kdf=(1, 8192), pack_size=MiB)
    data = {}
    ids = []
    for _ in range(blobs):
        plain = os.urandom(BLOB)
        blob_id, _added = repo.save_blob(DATA, plain)
        ids.append(blob_id)
        data[blob_id] = plain
    repo.flush()
    repo.close()
    backend = CountingBackend(LocalBackend(path))
    repo = Repository.open(backend, PASSWORD)  # type: ignore[arg-type]
    repo.load_index()
    return repo, ids, data


def _loads(repo: Repository) -> list[tuple[str, int, int | None]]:
    backend = repo.backend
    assert isinstance(backend, CountingBackend)
    seen: list[tuple[str, int, int | None]] = []
    lock = threading.Lock()

    def hook(ftype: FileType, name: str, offset: int, length: int | None) -> None:
        if ftype is FileType.DATA:
            with lock:
                seen.append((name, offset, length))

    backend.on_load = hook
    return seen


def test_each_run_read_once_and_held_within_the_budget(tmp_path: Path) -> None:
    repo, ids, data = _repo(tmp_path, 24)
    loads = _loads(repo)
    budget = 3 * MiB
    reader = PackReader(repo, in_flight=4, budget=budget)
    most = 0
    try:
        reader.plan([[blob_id] for blob_id in ids])
        assert reader.runs == len({repo.preferred_location(b).pack_id for b in ids})  # type: ignore[union-attr]
        reader.start()
        for blob_id in ids:
            assert reader.get(blob_id) == data[blob_id]
            most = max(most, reader._held_bytes)
    finally:
        reader.close()
    assert max(Counter(name for name, _o, _n in loads).values()) == 1
    assert reader.direct_loads == 0
    assert most <= budget


def test_a_duplicate_needed_far_later_is_dropped_and_read_alone(tmp_path: Path) -> None:
    repo, ids, data = _repo(tmp_path, 24)
    loads = _loads(repo)
    first = ids[0]
    files = [[blob_id] for blob_id in ids] + [[first]]  # the first blob again, at the very end
    sizer = PackReader(repo, in_flight=1)
    sizer.plan(files)
    largest = max(run.length for run in sizer._runs)
    sizer.close()
    # room for any one run, not for it and the duplicate held for the end: the duplicate goes
    reader = PackReader(repo, in_flight=2, budget=largest + BLOB // 2)
    try:
        reader.plan(files)
        reader.start()
        for blob_ids in files:
            assert reader.get(blob_ids[0]) == data[blob_ids[0]]
    finally:
        reader.close()
    assert reader.direct_loads == 1
    assert len(loads) == reader.runs + 1


def test_unplanned_blobs_and_missing_packs_are_what_load_blob_says(tmp_path: Path) -> None:
    repo, ids, data = _repo(tmp_path, 8)
    gone = repo.preferred_location(ids[-1])
    assert gone is not None
    repo.backend.remove(FileType.DATA, gone.pack_id.hex())
    reader = PackReader(repo, in_flight=2)
    try:
        reader.plan([[blob_id] for blob_id in ids[1:]])  # ids[0] not in the plan
        reader.start()
        assert reader.get(ids[0]) == data[ids[0]]
        with pytest.raises(PackMissing):
            reader.get(ids[-1])
    finally:
        reader.close()
