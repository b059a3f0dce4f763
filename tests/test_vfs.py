"""The mount's filesystem logic (backupfs.mount.vfs) driven directly, without FUSE or the kernel.

Repositories are made in-process through the Repository API and the archiver, with a cheap key
derivation, to keep these tests fast (tests/fuse/ drives the real CLI).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from support.richtree import make_rich_tree

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.crypto import file_id
from backupfs.mount.api import Attr, FsError, VfsOptions
from backupfs.mount.inodes import ROOT_INO
from backupfs.mount.vfs import Vfs
from backupfs.ops.backup import Archiver, BackupOptions
from backupfs.ops.treeview import lookup as tree_lookup
from backupfs.repository.repo import Repository

MiB = 1 << 20
PASSWORD = "vfs tests"


def open_repo(path: Path) -> Repository:
    return Repository.open(LocalBackend(str(path)), PASSWORD.encode())


def new_repo(path: Path) -> Path:
    Repository.init(LocalBackend(str(path)), PASSWORD.encode(), kdf=(1, 8192)).close()
    return path


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    return new_repo(tmp_path / "repo")


def backup(repo_path: Path, src: Path, **options: object) -> str:
    repo = open_repo(repo_path)
    try:
        repo.load_index()
        sid, _snap = Archiver(repo, BackupOptions(paths=[str(src)], **options)).run()  # type: ignore[arg-type]
        return sid
    finally:
        repo.close()


@contextlib.asynccontextmanager
async def running(repo: Repository, **options: object) -> AsyncIterator[Vfs]:
    vfs = Vfs(repo, VfsOptions(**options))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(vfs.serve)
        await vfs.wait_loaded()
        yield vfs
        nursery.cancel_scope.cancel()


async def walk(vfs: Vfs, path: str | bytes, lookups: Counter[int] | None = None) -> Attr:
    """The entry at `path`; `lookups` counts the lookups the kernel would now hold."""
    attr = await vfs.getattr(ROOT_INO)
    for part in os.fsencode(path).split(b"/"):
        if part:
            attr = await vfs.lookup(attr.ino, part)
            if lookups is not None:
                lookups[attr.ino] += 1
    return attr


async def listdir(vfs: Vfs, ino: int) -> dict[bytes, Attr]:
    fh = await vfs.opendir(ino)
    out = {}
    try:
        for entry in vfs.readdir(fh, 0):
            out[entry.name] = entry.attr
            vfs.remember(entry)
    finally:
        vfs.releasedir(fh)
    return out


async def read_file(vfs: Vfs, ino: int, off: int = 0, size: int | None = None, step: int = 128 * 1024) -> bytes:
    fh = await vfs.open(ino, os.O_RDONLY)
    try:
        end = (await vfs.getattr(ino)).size if size is None else off + size
        out = bytearray()
        while off < end:
            data = await vfs.read(fh, off, min(step, end - off))
            if not data:
                break
            out += data
            off += len(data)
        return bytes(out)
    finally:
        vfs.release(fh)


async def snapshot_names(vfs: Vfs) -> list[bytes]:
    """snapshots/, oldest first, listed without adding to the inode table (nothing remembered)."""
    fh = await vfs.opendir((await vfs.lookup(ROOT_INO, b"snapshots")).ino)
    try:
        return [entry.name for entry in vfs.readdir(fh, 0)]
    finally:
        vfs.releasedir(fh)


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, object], Path]]:
    """One repository holding one snapshot of the rich tree (made once: backups take time)."""
    base = tmp_path_factory.mktemp("vfs")
    repo = new_repo(base / "repo")
    src = base / "src"
    manifest = make_rich_tree(src)
    backup(repo, src, tags=["nightly", "a/b"])
    yield repo, manifest, src


async def test_layout_and_metadata_match_the_source(rich: tuple[Path, dict[str, object], Path]) -> None:
    repo_path, _manifest, src = rich
    async with running(open_repo(repo_path)) as vfs:
        root = await listdir(vfs, ROOT_INO)
        assert set(root) == {b"snapshots", b"ids", b"hosts", b"tags", b"versions", b"latest"}
        assert stat.S_ISLNK(root[b"latest"].mode)
        (name,) = await snapshot_names(vfs)
        assert await vfs.readlink(root[b"latest"].ino) == b"snapshots/" + name
        tags = await listdir(vfs, root[b"tags"].ino)
        assert set(tags) == {b"nightly", b"a_b"}
        nightly = await listdir(vfs, tags[b"nightly"].ino)
        assert set(nightly) == {name, b"latest"}
        assert await vfs.readlink(nightly[b"latest"].ino) == name
        host = os.uname().nodename.encode()
        assert set(await listdir(vfs, (await walk(vfs, b"hosts/" + host)).ino)) == {name, b"latest"}
        ids = await listdir(vfs, root[b"ids"].ino)
        assert len(ids) == 1 and len(next(iter(ids))) == 8

        checked = 0
        for dirpath, dirnames, filenames in os.walk(src):
            for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                st = os.lstat(entry)
                attr = await walk(vfs, b"snapshots/" + name + os.fsencode(entry))
                assert attr.mode == st.st_mode, entry
                assert (attr.uid, attr.gid, attr.mtime_ns, attr.ctime_ns) == (
                    st.st_uid,
                    st.st_gid,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                ), entry
                if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    assert attr.size == st.st_size, entry
                if not stat.S_ISDIR(st.st_mode):
                    assert attr.nlink == st.st_nlink, entry
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    assert attr.rdev == st.st_rdev, entry
                if stat.S_ISLNK(st.st_mode):
                    assert await vfs.readlink(attr.ino) == os.readlink(os.fsencode(entry))
                names = sorted(os.fsencode(n) for n in os.listxattr(entry, follow_symlinks=False))
                assert sorted(await vfs.listxattr(attr.ino)) == names, entry
                for n in names:
                    assert await vfs.getxattr(attr.ino, n) == os.getxattr(entry, n, follow_symlinks=False)
                checked += 1
        assert checked > 60


async def test_contents_sparse_blocks_and_hardlinks(rich: tuple[Path, dict[str, object], Path]) -> None:
    repo_path, m, _src = rich
    async with running(open_repo(repo_path)) as vfs:
        snap = b"snapshots/" + (await snapshot_names(vfs))[0]
        for key in ("small", "random", "big", "empty", "tail_hole"):
            path = Path(m[key])  # type: ignore[arg-type]
            attr = await walk(vfs, snap + os.fsencode(path))
            assert await read_file(vfs, attr.ino) == path.read_bytes(), key
        # a sparse file: data at the right places, zeros between, and honest st_blocks
        sparse = Path(m["sparse"])  # type: ignore[arg-type]
        attr = await walk(vfs, snap + os.fsencode(sparse))
        assert attr.blocks * 512 < 1 * MiB < attr.size
        with open(sparse, "rb") as f:
            for off, data in m["sparse_parts"]:  # type: ignore[attr-defined]
                start = max(off - 10, 0)
                want = os.pread(f.fileno(), len(data) + 20, start)
                assert await read_file(vfs, attr.ino, start, len(data) + 20) == want
            assert await read_file(vfs, attr.ino, 5 * MiB, 4096) == bytes(4096)
        # ranges across chunk boundaries, odd sizes
        big = Path(m["big"]).read_bytes()  # type: ignore[arg-type]
        battr = await walk(vfs, snap + os.fsencode(m["big"]))  # type: ignore[arg-type]
        for off, size in ((0, 1), (1, 3 * MiB), (MiB - 7, 2 * MiB + 3), (len(big) - 5, 100)):
            assert await read_file(vfs, battr.ino, off, size, step=size) == big[off : off + size]
        # hardlinks share one inode number; different files do not
        inos = {(await walk(vfs, snap + os.fsencode(p))).ino for p in m["hardlinks"]}  # type: ignore[attr-defined]
        assert len(inos) == 1
        assert battr.ino not in inos
        # a view of the same snapshot under ids/ is a different tree of inodes
        (short,) = (await listdir(vfs, (await walk(vfs, b"ids")).ino)).keys()
        other = await walk(vfs, b"ids/" + short + os.fsencode(m["big"]))  # type: ignore[arg-type]
        assert other.ino != battr.ino and other.size == battr.size


async def test_inode_numbers_are_stable_and_forget_frees_memory(rich: tuple[Path, dict[str, object], Path]) -> None:
    repo_path, _m, src = rich
    async with running(open_repo(repo_path)) as vfs:
        snap = b"snapshots/" + (await snapshot_names(vfs))[0]
        base = vfs.inode_count()
        before = {}
        lookups: Counter[int] = Counter()
        for dirpath, dirnames, filenames in os.walk(src):
            for n in dirnames + filenames:
                path = snap + os.fsencode(os.path.join(dirpath, n))
                before[path] = (await walk(vfs, path, lookups)).ino
        assert vfs.inode_count() >= base + len(set(before.values()))
        # every walk took one lookup per component; give them all back, as the kernel would
        vfs.forget(list(lookups.items()))
        assert vfs.inode_count() == base
        for path, ino in before.items():
            assert (await walk(vfs, path)).ino == ino


async def test_read_only(rich: tuple[Path, dict[str, object], Path]) -> None:
    repo_path, m, _src = rich
    async with running(open_repo(repo_path)) as vfs:
        attr = await walk(vfs, b"snapshots/" + (await snapshot_names(vfs))[0] + os.fsencode(m["small"]))  # type: ignore[arg-type]
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
            with pytest.raises(FsError) as exc:
                await vfs.open(attr.ino, flags)
            assert exc.value.errno == errno.EROFS
        with pytest.raises(FsError) as exc:
            await vfs.lookup(ROOT_INO, b"nonexistent")
        assert exc.value.errno == errno.ENOENT


async def test_versions_refresh_and_forgotten_snapshots(repo_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    f = src / "d" / "file.txt"
    versions = [b"one\n", b"one\n", b"two\n", b"one\n"]
    f.write_bytes(versions[0])
    sids = [backup(repo_path, src)]
    async with running(open_repo(repo_path), refresh_interval=3600) as vfs:
        assert len(await snapshot_names(vfs)) == 1
        for content in versions[1:]:
            f.write_bytes(content)
            (src / "d" / f"only-{len(content)}-{content[:3].decode()}").write_bytes(b"x")
            sids.append(backup(repo_path, src))
            assert await vfs.refresh()
        names = await snapshot_names(vfs)
        assert len(names) == 4
        assert await vfs.readlink((await walk(vfs, b"latest")).ino) == b"snapshots/" + names[-1]

        vpath = b"versions" + os.fsencode(f)
        entries = await listdir(vfs, (await walk(vfs, vpath)).ino)
        # distinct contents, each named by the snapshot where it first appeared
        assert sorted(entries) == [names[0], names[2]]
        assert await read_file(vfs, entries[names[0]].ino) == b"one\n"
        assert await read_file(vfs, entries[names[2]].ino) == b"two\n"
        # a folder's versions are the union of what it ever held
        folder = await listdir(vfs, (await walk(vfs, b"versions" + os.fsencode(src / "d"))).ino)
        assert sorted(folder) == [b"file.txt", b"only-4-one", b"only-4-two"]

        # forget the newest snapshot: it disappears and latest moves back
        repo_path.joinpath("snapshots", sids[-1]).unlink()
        assert await vfs.refresh()
        assert (await snapshot_names(vfs)) == names[:-1]
        assert await vfs.readlink((await walk(vfs, b"latest")).ino) == b"snapshots/" + names[-2]
        with pytest.raises(FsError):
            await walk(vfs, b"snapshots/" + names[-1])
        assert not await vfs.refresh()


async def test_two_snapshots_in_one_second_get_unique_names(repo_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    backup(repo_path, src, time_ns=1_700_000_000_000_000_000)
    backup(repo_path, src, time_ns=1_700_000_000_500_000_000, host="other")
    async with running(open_repo(repo_path)) as vfs:
        names = sorted(await listdir(vfs, (await walk(vfs, b"snapshots")).ino))
        assert len(names) == 2 and names[1] == names[0] + b"-1"
        assert len(await listdir(vfs, (await walk(vfs, b"ids")).ino)) == 2


def _data_blob(repo: Repository, path: Path) -> tuple[bytes, Path]:
    repo.load_index()
    _sid, snap = repo.find_snapshot("latest")
    node = tree_lookup(repo, snap.tree, str(path))
    blob_id = node.content[0][1]  # type: ignore[index]
    loc = repo.index.lookup(blob_id)
    assert loc is not None
    pack = loc.pack_id.hex()
    return blob_id, Path(repo.backend.location) / "data" / pack[:2] / pack


async def test_damaged_chunk_gives_eio_for_that_file_only(
    repo_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "victim.bin").write_bytes(os.urandom(200_000))
    (src / "fine.txt").write_bytes(b"fine\n")
    backup(repo_path, src)
    repo = open_repo(repo_path)
    blob_id, pack_path = _data_blob(repo, src / "victim.bin")
    loc = repo.index.lookup(blob_id)
    assert loc is not None
    with open(pack_path, "r+b") as fp:
        fp.seek(loc.offset + loc.length // 2)
        byte = fp.read(1)
        fp.seek(-1, os.SEEK_CUR)
        fp.write(bytes([byte[0] ^ 0xFF]))
    async with running(open_repo(repo_path)) as vfs:
        snap = b"snapshots/" + (await snapshot_names(vfs))[0]
        victim = await walk(vfs, snap + os.fsencode(src / "victim.bin"))
        with pytest.raises(FsError) as exc:
            await read_file(vfs, victim.ino)
        assert exc.value.errno == errno.EIO
        assert "victim.bin" in caplog.text
        fine = await walk(vfs, snap + os.fsencode(src / "fine.txt"))
        assert await read_file(vfs, fine.ino) == b"fine\n"


async def test_pack_moved_by_prune_is_found_after_an_index_reload(repo_path: Path, tmp_path: Path) -> None:
    """Simulates prune repacking under a running mount: new pack + superseding index, old ones gone."""
    src = tmp_path / "src"
    src.mkdir()
    payload = os.urandom(300_000)
    (src / "f.bin").write_bytes(payload)
    backup(repo_path, src)
    async with running(open_repo(repo_path), refresh_interval=3600) as vfs:
        snap = b"snapshots/" + (await snapshot_names(vfs))[0]
        attr = await walk(vfs, snap + os.fsencode(src / "f.bin"))
        repo = open_repo(repo_path)
        _blob, pack_path = _data_blob(repo, src / "f.bin")
        old_pack = bytes.fromhex(pack_path.name)
        files = repo.index_files()
        entries = next(f.packs[old_pack] for f in files.values() if old_pack in f.packs)
        moved = pack_path.read_bytes() + b"repacked"
        new_name = file_id(moved)
        repo.backend.save(FileType.DATA, new_name, moved)
        repo.save_index({bytes.fromhex(new_name): entries}, supersedes=[bytes.fromhex(n) for n in files])
        for name in files:
            repo.backend.remove(FileType.INDEX, name)
        pack_path.unlink()

        assert await read_file(vfs, attr.ino) == payload
        assert vfs.repo.index.lookup(_blob).pack_id.hex() == new_name  # type: ignore[union-attr]


async def test_sequential_reads_prefetch_and_cache_stays_bounded(repo_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(12 * MiB)
    (src / "big").write_bytes(data)
    backup(repo_path, src)
    async with running(open_repo(repo_path), cache_bytes=6 * MiB, readahead_bytes=4 * MiB) as vfs:
        attr = await walk(vfs, b"snapshots/" + (await snapshot_names(vfs))[0] + os.fsencode(src / "big"))
        fh = await vfs.open(attr.ino, os.O_RDONLY)
        first = await vfs.read(fh, 0, 128 * 1024)
        assert isinstance(first, memoryview) and bytes(first) == data[: 128 * 1024]
        await trio.sleep(0.3)
        assert vfs.cache_stats()["chunks"] >= 3  # the next chunks were fetched ahead of the reader
        assert await read_file(vfs, attr.ino) == data
        assert vfs.cache_stats()["chunk_bytes"] <= 6 * MiB

        async def reader(seed: int) -> None:
            for i in range(20):
                off = (seed * 7919 + i * 104729) * 97 % (len(data) - 70_000)
                assert await read_file(vfs, attr.ino, off, 65_536, step=65_536) == data[off : off + 65_536]

        async with trio.open_nursery() as n:
            for seed in range(8):
                n.start_soon(reader, seed)
        vfs.release(fh)


async def test_reads_answered_out_of_order_decrypt_each_chunk_once(repo_path: Path, tmp_path: Path) -> None:
    """The kernel's read-ahead has several 1 MiB reads in flight and their answers finish out of
    order: a chunk whose end is read before its start must still be in the cache then (it was
    dropped, and 30 % of a large file's chunks were decrypted twice)."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(12 * MiB)
    (src / "big").write_bytes(data)
    backup(repo_path, src)
    repo = open_repo(repo_path)
    opened: list[bytes] = []
    real_open_blob = repo.open_blob

    def counting_open_blob(
        btype: int, blob_id: bytes, envelope: bytes | memoryview, pack: str = "?", raw_length: int | None = None
    ) -> bytes:
        opened.append(blob_id)
        return real_open_blob(btype, blob_id, envelope, pack, raw_length)

    repo.open_blob = counting_open_blob  # type: ignore[method-assign]
    async with running(repo) as vfs:
        attr = await walk(vfs, b"snapshots/" + (await snapshot_names(vfs))[0] + os.fsencode(src / "big"))
        fh = await vfs.open(attr.ino, os.O_RDONLY)
        opened.clear()  # the trees on the way
        out = bytearray(len(data))
        for pair in range(0, 12, 2):  # 1 MiB reads, each pair answered second-first
            for block in (pair + 1, pair):
                chunk = await vfs.read(fh, block * MiB, MiB)
                out[block * MiB : block * MiB + len(chunk)] = chunk
        vfs.release(fh)
    assert out == data
    assert len(opened) == len(set(opened)) >= 6, "a chunk was decrypted more than once"
    assert vfs.cache_stats()["chunks"] == 0  # every chunk was read whole, so none is kept


async def test_damaged_snapshot_file_is_skipped_once(repo_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    backup(repo_path, src)
    bad = repo_path / "snapshots" / backup(repo_path, src, time_ns=1_800_000_000_000_000_000)
    bad.write_bytes(b"garbage")
    async with running(open_repo(repo_path), refresh_interval=3600) as vfs:
        assert len(await snapshot_names(vfs)) == 1
        assert not await vfs.refresh()  # no change, no endless reloading
        bad.unlink()
        assert not await vfs.refresh()


async def test_small_files_read_in_order_are_pushed_to_the_page_cache(repo_path: Path, tmp_path: Path) -> None:
    """Once a reader opens a folder's files in listing order, the next small files' contents go
    to the kernel's page cache (the `store` callback) for the inodes the kernel holds, so that
    reading them needs no request, and they do not occupy the chunk cache."""
    src = tmp_path / "src"
    src.mkdir()
    contents = {f"f{i:02}".encode(): os.urandom(1000 + 97 * i) for i in range(40)}
    for name, data in contents.items():
        (src / os.fsdecode(name)).write_bytes(data)
    backup(repo_path, src)
    stored: dict[int, bytes] = {}

    def store(ino: int, data: memoryview) -> None:
        assert threading.current_thread() is not threading.main_thread()  # never on the loop (could deadlock)
        stored[ino] = bytes(data)

    vfs = Vfs(open_repo(repo_path), VfsOptions(), store=store)
    async with trio.open_nursery() as nursery:
        await nursery.start(vfs.serve)
        await vfs.wait_loaded()
        folder = await walk(vfs, b"snapshots/" + (await snapshot_names(vfs))[0] + os.fsencode(src))
        listing = await listdir(vfs, folder.ino)
        by_ino = {attr.ino: name for name, attr in listing.items()}
        vfs.forget([(listing[b"f07"].ino, 1)])  # the kernel dropped this one: nothing to push to
        for name in (b"f00", b"f01", b"f02"):
            assert await read_file(vfs, listing[name].ino) == contents[name]
        with trio.fail_after(10):
            while len(stored) < 20:
                await trio.sleep(0.01)
        assert listing[b"f07"].ino not in stored
        for ino, data in stored.items():
            assert data == contents[by_ino[ino]]
        assert {by_ino[ino] for ino in stored} >= {f"f{i:02}".encode() for i in range(3, 20) if i != 7}
        assert vfs.cache_stats()["chunks"] <= 3  # pushed contents were not kept
        # a pushed file can still be read through the filesystem (the kernel may evict pages)
        assert await read_file(vfs, listing[b"f10"].ino) == contents[b"f10"]
        nursery.cancel_scope.cancel()


async def test_index_reload_after_a_miss_is_remembered_by_the_next_refresh(repo_path: Path, tmp_path: Path) -> None:
    """A blob miss reloads every index file; the next snapshot refresh must know which files that
    load covered: neither reload everything again (for files it no longer has) nor read again
    a file the reload already read."""
    src = tmp_path / "src"
    src.mkdir()
    payload = os.urandom(300_000)
    (src / "f.bin").write_bytes(payload)
    backup(repo_path, src)
    async with running(open_repo(repo_path), refresh_interval=3600) as vfs:
        snap = b"snapshots/" + (await snapshot_names(vfs))[0]
        attr = await walk(vfs, snap + os.fsencode(src / "f.bin"))
        # prune repacks f.bin's pack (new pack, superseding index, old files gone) ...
        repo = open_repo(repo_path)
        _blob, pack_path = _data_blob(repo, src / "f.bin")
        old_pack = bytes.fromhex(pack_path.name)
        files = repo.index_files()
        entries = next(f.packs[old_pack] for f in files.values() if old_pack in f.packs)
        moved = pack_path.read_bytes() + b"repacked"
        repo.backend.save(FileType.DATA, file_id(moved), moved)
        repo.save_index({bytes.fromhex(file_id(moved)): entries}, supersedes=[bytes.fromhex(n) for n in files])
        for name in files:
            repo.backend.remove(FileType.INDEX, name)
        pack_path.unlink()
        # ... and a new backup adds a snapshot and its index file, which the mount has not seen
        (src / "g.bin").write_bytes(os.urandom(1000))
        backup(repo_path, src)

        calls: Counter[str] = Counter()
        load_index, load_index_file = vfs.repo.load_index, vfs.repo.load_index_file

        def counted_load_index() -> set[str]:
            calls["load_index"] += 1
            return load_index()

        def counted_load_index_file(name: str) -> object:
            calls["load_index_file " + name] += 1
            return load_index_file(name)

        vfs.repo.load_index = counted_load_index  # type: ignore[method-assign]
        vfs.repo.load_index_file = counted_load_index_file  # type: ignore[method-assign,assignment]
        assert await read_file(vfs, attr.ino) == payload  # the miss: one full reload, of every file
        assert calls["load_index"] == 1
        calls.clear()
        assert await vfs.refresh()  # the new snapshot appears ...
        assert not calls  # ... without reading any index file again
        assert len(await snapshot_names(vfs)) == 2
