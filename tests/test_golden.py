"""The golden repository: committed bytes of format version 1 that backupfs must keep reading, and
that a reader written from docs/format.md alone (golden_reader.py) decodes to the same thing.

A change to the bytes backupfs writes or expects (an AAD, a key derivation parameter, a msgpack
key, a compression layout) fails here until the spec, the independent reader and the golden
repository (tools/make_golden_repo.py) change with it, and the format version with them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import golden_reader
import make_golden_repo as golden
import pytest
from golden_reader import Reader
from pyfastcdc.py.constants import GEAR

from backupfs.backends.local import LocalBackend
from backupfs.chunker import Chunker
from backupfs.crypto import MasterKey
from backupfs.format.pack import DATA
from backupfs.format.tree import DIR, FILE, Node
from backupfs.repository.repo import Repository

GOLDEN = Path(__file__).resolve().parent / "golden_repo"
# The committed files, by name (the hash of their bytes): regenerating the repository is a
# decision this list records.
FILES = {
    "config",
    "data/61/615dba61aec3ee4a3f235c47d8df1d4ad5cc2d556ca2d4c44210bde061b3b474",
    "data/cc/cc62707c1c886a50ee3f408a829a14065526d5045e3f488c076fca8ca53604e1",
    "index/1fa46dc6c76afdb54354a250dd3173f0d3018a82670dbe744ed1ad4e12c0870e",
    "keys/26d7381ddd9101cd90e4806161b224c3b55e2df0f9cea2d0a0328f8aba405740",
    "locks/28ed97f7713b923b8b80e5a12c72283cd3c9fda3b10a9f472696882441ecbc6e",
    "snapshots/8a7342182aabbacb606eec0720568179e002ba90bcccc6094c21a1979a37ca33",
}
SRC = os.fsencode(golden.SOURCE)


@pytest.fixture(scope="module")
def spec() -> Reader:
    return Reader(GOLDEN, golden.PASSWORD)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    shutil.copytree(GOLDEN, tmp_path / "repo")  # a reader must not change the committed bytes
    r = Repository.open(LocalBackend(str(tmp_path / "repo")), golden.PASSWORD)
    r.load_index()
    return r


def test_the_committed_files_are_the_golden_ones() -> None:
    assert {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*") if p.is_file()} == FILES


def check_golden_content(spec: Reader, source: bytes) -> None:
    """What the spec reader finds is what tools/make_golden_repo.py backed up."""
    assert (spec.chunker, spec.pack_size, spec.compression) == (list(golden.CHUNKER), 16 << 20, "lz4")
    assert len(spec.locks) == 1 and spec.locks[0]["exclusive"] is False
    # raw and lz4 data, zstd trees, and the uncompressed config body and key metadata
    assert {("data", 0), ("data", 1), ("tree", 2), ("config", 0), ("key meta", 0)} <= set(spec.compressions)
    (snap,) = spec.snapshots.values()
    assert (snap["time"], snap["host"], snap["tags"], snap["paths"]) == (
        golden.SNAPSHOT_TIME_NS,
        golden.HOST,
        golden.TAGS,
        [os.fsdecode(source)],
    )
    entries = snap["entries"]
    for name, data in golden.FILES.items():
        node = entries[source + b"/" + name]
        assert (node["t"], node["data"], node["m"], node["mt"]) == ("f", data, golden.MODES[name], golden.MTIME_NS)
    a, b = entries[source + b"/hardlink-a"], entries[source + b"/" + golden.HARDLINK_B]
    assert (a["i"], a["dv"], a["nl"]) == (b["i"], b["dv"], 2) and a["c"] == b["c"]
    assert entries[source + b"/xattr.txt"]["x"] == [list(golden.XATTR)]
    sparse = entries[source + b"/" + golden.SPARSE]
    expected = bytearray(golden.SPARSE_SIZE)
    for offset, data in golden.sparse_data().items():
        expected[offset : offset + len(data)] = data
    assert sparse["data"] == expected
    # the holes are not stored: the chunks hold the data pieces, and nothing between them
    extents = [(off, off + len(data)) for off, data in golden.sparse_data().items()]
    assert all(any(lo <= off < hi for lo, hi in extents) for off, _ in sparse["c"])
    assert sum(spec.blobs[blob_id][4] for _, blob_id in sparse["c"]) == golden.SPARSE_PIECE * len(extents)
    assert entries[source + b"/" + golden.SYMLINK[0]]["lt"] == golden.SYMLINK[1]
    assert entries[source + b"/" + golden.FIFO]["t"] == "p"
    assert entries[source + b"/sub"]["m"] == golden.MODES[b"sub"]


def test_the_spec_reader_decodes_the_committed_repository(spec: Reader) -> None:
    assert spec.aead == "aegis256"
    assert ("tree", 0) in spec.compressions  # a listing zstd could not shrink by 1/64, stored raw
    check_golden_content(spec, SRC)


@pytest.mark.parametrize("suite", ["aegis256", "xchacha20poly1305"])
def test_the_spec_reader_decodes_what_backupfs_writes_today(tmp_path: Path, suite: str) -> None:
    """The committed bytes prove the reading side; this, the writing side."""
    golden.make_repository(tmp_path / "repo", tmp_path / "src", suite)
    spec = Reader(tmp_path / "repo", golden.PASSWORD)
    assert spec.aead == suite
    check_golden_content(spec, os.fsencode(tmp_path / "src"))


def _walk(repo: Repository, tree_id: bytes, path: bytes, out: dict[bytes, Node]) -> None:
    for node in repo.load_tree(tree_id):
        out[path + b"/" + node.name] = node
        if node.type == DIR and node.subtree is not None:
            _walk(repo, node.subtree, path + b"/" + node.name, out)


def test_repository_reads_what_the_spec_reader_reads(spec: Reader, repo: Repository) -> None:
    assert (list(repo.config.chunker), repo.config.pack_size, repo.config.compression) == (
        spec.chunker,
        spec.pack_size,
        spec.compression,
    )
    assert repo.header.repo_id == spec.repo_id and repo.master.id == spec.master["id"]
    (key,) = repo.list_keys()
    assert (key.host, key.user, key.created_ns) == (spec.key_meta["host"], spec.key_meta["user"], spec.key_meta["created"])
    ((sid, snap),) = repo.list_snapshots()
    stored = spec.snapshots[sid]
    assert (snap.time_ns, snap.host, snap.user, snap.paths, snap.tags, snap.tree, snap.summary) == (
        stored["time"],
        stored["host"],
        stored["user"],
        stored["paths"],
        stored["tags"],
        stored["tree"],
        stored["summary"],
    )
    nodes: dict[bytes, Node] = {}
    _walk(repo, snap.tree, b"", nodes)
    assert list(nodes) == list(stored["entries"])
    for path, node in nodes.items():
        raw = stored["entries"][path]
        assert (node.type, node.mode, node.uid, node.gid, node.user, node.group) == (
            raw["t"],
            raw["m"],
            raw["u"],
            raw["g"],
            raw["U"],
            raw["G"],
        ), path
        assert (node.mtime_ns, node.atime_ns, node.ctime_ns, node.size) == (raw["mt"], raw["at"], raw["ct"], raw["s"])
        assert (node.inode, node.device, node.nlink) == (raw["i"], raw["dv"], raw["nl"]), path
        assert node.link_target == raw.get("lt") and node.subtree == raw.get("st"), path
        assert [list(x) for x in node.xattrs or []] == raw.get("x", []), path
        if node.type == FILE:
            assert [list(c) for c in node.content or []] == raw.get("c", []), path
            data = bytearray(node.size)
            for off, blob_id in node.content or []:
                chunk = repo.load_blob(DATA, blob_id)
                data[off : off + len(chunk)] = chunk
            assert data == raw["data"], path


@pytest.mark.parametrize("params", [(64, 256, 1024), (1024, 4096, 16384), (300, 3000, 5000)])
def test_the_spec_chunker_cuts_where_backupfs_cuts(params: tuple[int, int, int]) -> None:
    master = MasterKey.generate()
    seed = golden_reader.chunker_seed(master.chunker)
    assert seed == master.chunker_seed()
    data = golden.random_bytes(b"chunk me", 96 << 10) + bytes(20_000) + golden.text()  # random, zeros, text
    ours = [len(c) for c in Chunker(params, seed).cut(data)]
    assert len(ours) > 10 and ours == golden_reader.cut(data, params, seed, list(GEAR))
