"""Compression bombs: a blob whose compressed payload declares or inflates to far more than the
blob can hold. Built with the real key (an attacker who has the password, or a bug), placed in a
real repository through its own pack and index files, and met by restore, cat, ls and check in
real processes whose peak memory is measured.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import lz4.block
import msgpack
import pytest
import zstandard
from fastrepo import FAST_KDF, init_fast
from support.cli import CLI, PASSWORD

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.backends.memory import MemoryBackend
from backupfs.compress import LZ4, ZSTD
from backupfs.errors import IntegrityError, UsageError
from backupfs.format.config import ConfigBody, config_aad
from backupfs.format.pack import DATA, TREE, PackEntry, blob_aad
from backupfs.format.tree import FILE
from backupfs.ops.treeview import lookup
from backupfs.repository.packer import Packer
from backupfs.repository.repo import Repository

MiB = 1 << 20
GiB = 1 << 30
RSS_LIMIT_KIB = 300 * 1024  # the old code needed 2.1 GB for the lz4 bomb below

# Runs the real CLI and records its peak RSS (KiB) in the file named by the first argument. Not
# getrusage's ru_maxrss: Linux carries the forking parent's RSS across exec into it (this test
# process's, hundreds of MB late in a suite run); VmHWM is the peak of this program's own memory.
MEASURED = """
import runpy, sys
out = sys.argv.pop(1)
try:
    runpy.run_module("backupfs", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(out, "w") as f:
        f.write(peak)
"""


def lz4_bomb(size: int) -> bytes:
    """An lz4 block (with its 4-byte size) inflating to `size` zero bytes from ~size/255 bytes:
    one literal, then one match (offset 1) repeating it, its length spelled in 255s, then the
    five literals a block must end with."""
    extension = size - 1 - 5 - 4 - 15
    n255, rest = divmod(extension, 255)
    repeat = bytes([0x1F]) + b"\x00" + (1).to_bytes(2, "little") + b"\xff" * n255 + bytes([rest])
    return size.to_bytes(4, "little") + repeat + bytes([0x50]) + bytes(5)


def zstd_bomb(size: int) -> bytes:
    """A real zstd frame of `size` zero bytes that says so in its header (a few KiB per GiB)."""
    out = zstandard.ZstdCompressor(level=1, write_content_size=True).compressobj(size=size)
    zeros = bytes(16 * MiB)
    body = b"".join(out.compress(zeros) for _ in range(size // len(zeros)))
    return body + out.flush()


def test_lz4_bomb_is_what_it_claims() -> None:
    assert lz4.block.decompress(lz4_bomb(MiB)) == bytes(MiB)
    assert len(lz4_bomb(GiB)) < 4.3 * MiB


def replace_blob(repo_path: Path, blob_id: bytes, btype: int, payload: bytes, raw_length: int | None = None) -> None:
    """Puts `payload` (algorithm byte + body), sealed as blob `blob_id`, where the blob was: a new
    pack with the bomb and the other blobs of the old pack, and one index superseding the rest
    (listing `raw_length` as the blob's size if given, else its true size)."""
    repo = Repository.open(LocalBackend(str(repo_path)), PASSWORD.encode())
    try:
        repo.load_index()
        loc = repo.index.lookup(blob_id)
        assert loc is not None
        old_pack = loc.pack_id.hex()
        old_data = repo.backend.load(FileType.DATA, old_pack)
        written: list[tuple[str, list[PackEntry]]] = []

        def upload(name: str, data: bytes, entries: list[PackEntry]) -> None:
            repo.backend.save(FileType.DATA, name, data)
            written.append((name, entries))

        packer = Packer(repo.cipher, 64 * MiB, upload)
        for e in repo.pack_header(old_pack, len(old_data)):
            if e.id == blob_id:
                envelope = repo.cipher.seal(payload, blob_aad(btype, blob_id))
                packer.add(btype, e.id, envelope, e.raw_length if raw_length is None else raw_length)
            else:
                packer.add(e.type, e.id, old_data[e.offset : e.offset + e.length], e.raw_length)
        packer.flush()
        packer.close()
        old_files = repo.index_files()
        packs = {pid: entries for f in old_files.values() for pid, entries in f.packs.items() if pid.hex() != old_pack}
        packs.update({bytes.fromhex(name): entries for name, entries in written})
        repo.save_index(packs, supersedes=[bytes.fromhex(n) for n in old_files])
        for name in old_files:
            repo.backend.remove(FileType.INDEX, name)
        repo.backend.remove(FileType.DATA, old_pack)
    finally:
        repo.close()


@pytest.fixture
def bombed(tmp_path: Path, cli_env: dict[str, str]) -> tuple[CLI, Path]:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "victim.txt").write_bytes(b"an honest small file\n" * 1000)
    (src / "other.txt").write_bytes(b"another file\n")
    init_fast(tmp_path / "repo")
    cli = CLI(tmp_path / "repo", cli_env)
    cli("backup", src)
    return cli, src


def blob_ids(cli: CLI, path: Path) -> tuple[bytes, bytes]:
    """(the file's only data blob, the tree blob of its folder)."""
    repo = Repository.open(LocalBackend(str(cli.repo)), PASSWORD.encode())
    try:
        repo.load_index()
        _sid, snap = repo.find_snapshot("latest")
        node = lookup(repo, snap.tree, str(path))
        folder = lookup(repo, snap.tree, str(path.parent))
        assert node.type == FILE and node.content is not None and len(node.content) == 1
        assert folder.subtree is not None
        return node.content[0][1], folder.subtree
    finally:
        repo.close()


def run_measured(cli: CLI, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[bytes], int]:
    rss_file = tmp_path / "rss"
    proc = subprocess.run(
        [sys.executable, "-c", MEASURED, str(rss_file), "-r", str(cli.repo), *args],
        env=cli.env,
        capture_output=True,
        timeout=600,
        check=False,
    )
    return proc, int(rss_file.read_text())


def one_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    text = proc.stderr.decode(errors="replace")
    assert "Traceback" not in text and "internal error" not in text and "MemoryError" not in text, text
    return text


@pytest.mark.parametrize("forged_raw_length", [False, True], ids=["index-honest", "index-claims-4GiB"])
def test_data_blob_lz4_bomb(bombed: tuple[CLI, Path], tmp_path: Path, forged_raw_length: bool) -> None:
    """4 MiB stored, 1 GiB declared: refused from its size prefix, memory stays small. The bound
    is the index's raw_length, and the chunker's maximum when the index lies too."""
    cli, src = bombed
    victim = src / "docs" / "victim.txt"
    data_id, _tree = blob_ids(cli, victim)
    raw_length = 2**32 - 1 if forged_raw_length else None
    replace_blob(cli.repo, data_id, DATA, bytes([LZ4]) + lz4_bomb(GiB), raw_length)
    bound = 8 * MiB if forged_raw_length else victim.stat().st_size

    target = tmp_path / "target"
    for args, expect in [
        (("restore", "latest", "--target", str(target)), 4),
        (("cat", "latest", str(victim)), 4),
        (("check", "--read-data"), 4),
    ]:
        proc, rss = run_measured(cli, tmp_path, *args)
        assert rss < RSS_LIMIT_KIB, (args, rss)
        err = one_line(proc)
        assert proc.returncode == expect, (args, err)
        assert f"declares 1073741824 bytes, more than the {bound}" in err and data_id.hex()[:16] in err, (args, err)
    # the rest of the snapshot is restored
    assert (target / str(src / "other.txt").lstrip("/")).read_bytes() == b"another file\n"


def test_tree_blob_zstd_bomb(bombed: tuple[CLI, Path], tmp_path: Path) -> None:
    """A folder's listing whose zstd frame says 1 GiB: refused from its header."""
    cli, src = bombed
    _data, tree_id = blob_ids(cli, src / "docs" / "victim.txt")
    replace_blob(cli.repo, tree_id, TREE, bytes([ZSTD]) + zstd_bomb(GiB))

    for args in (
        ("ls", "latest", str(src / "docs")),
        ("restore", "latest", "--target", str(tmp_path / "t")),
        ("check",),
    ):
        proc, rss = run_measured(cli, tmp_path, *args)
        assert rss < RSS_LIMIT_KIB, (args, rss)
        err = one_line(proc)
        assert proc.returncode == 4, (args, err)
        assert "declares 1073741824 bytes" in err and tree_id.hex()[:16] in err, (args, err)


def test_blobs_beyond_the_bounds_are_not_written(tmp_path: Path) -> None:
    """What could never be read back is refused when written, not found at restore."""
    init_fast(tmp_path / "repo")
    repo = Repository.open(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode())
    try:
        limit = repo.config.chunker[2]
        with pytest.raises(Exception, match=f"exceeds the {limit} bytes"):
            repo.save_blob(DATA, os.urandom(limit + 1))
        assert repo.save_blob(DATA, os.urandom(limit))[1] > 0
    finally:
        repo.close()


def test_config_cannot_lift_the_chunk_bound() -> None:
    """The chunker maximum bounds every data blob; a config may not set it to gigabytes."""
    body = ConfigBody((512 * 1024, 512 * 1024, 4 * GiB), 16 * MiB, "lz4").encode()
    with pytest.raises(IntegrityError, match="out of range"):
        ConfigBody.decode(body)
    with pytest.raises(UsageError):
        Repository.init(MemoryBackend(), b"pw", chunker=(512 * 1024, 512 * 1024, 128 * MiB), kdf=FAST_KDF)


# Chunker parameters the old reader accepted (min <= max <= 64 MiB) but pyfastcdc refuses: a
# backup then ended in "internal error: ValueError" at its first file larger than min.
OUT_OF_CHUNKER_RANGE = [
    (2 * MiB, 2 * MiB, 8 * MiB),  # min above 1 MiB
    (512 * 1024, 8 * MiB, 16 * MiB),  # avg above 4 MiB
    (512 * 1024, 512 * 1024, 32 * MiB),  # max above 16 MiB
    (32, 512 * 1024, 8 * MiB),  # min below 64
    (512 * 1024, 128, 8 * MiB),  # avg below 256 (and below min)
    (1 * MiB, 512 * 1024, 8 * MiB),  # avg below min
]


def _store_config_body(backend: MemoryBackend | LocalBackend, repo: Repository, body: dict[str, object]) -> None:
    """Replaces the config's body with `body`, sealed with the real key (as the key's holder can)."""
    header = dataclasses.replace(
        repo.header, body=repo.cipher.seal(b"\0" + msgpack.packb(body), config_aad(repo.header.repo_id))
    )
    backend.remove(FileType.CONFIG, "config")
    backend.save(FileType.CONFIG, "config", header.encode())


@pytest.mark.parametrize("chunker", OUT_OF_CHUNKER_RANGE, ids=lambda c: "/".join(map(str, c)))
def test_chunker_parameters_the_chunker_refuses_are_damage(chunker: tuple[int, int, int]) -> None:
    backend = MemoryBackend()
    repo = Repository.init(backend, b"pw", kdf=FAST_KDF)
    body = {"chunker": list(chunker), "pack_size": repo.config.pack_size, "compression": "lz4"}
    _store_config_body(backend, repo, body)
    repo.close()
    with pytest.raises(IntegrityError, match="repository config: chunk"):
        Repository.open(backend, b"pw")
    with pytest.raises(UsageError, match="chunk"):
        Repository.init(MemoryBackend(), b"pw", chunker=chunker, kdf=FAST_KDF)


def test_backup_to_a_config_the_chunker_refuses_is_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Through the real CLI: exit 4 and the reason, before anything is read or written."""
    init_fast(tmp_path / "repo")
    backend = LocalBackend(str(tmp_path / "repo"))
    repo = Repository.open(backend, PASSWORD.encode())
    body = {"chunker": [2 * MiB, 2 * MiB, 8 * MiB], "pack_size": repo.config.pack_size, "compression": "lz4"}
    _store_config_body(backend, repo, body)
    repo.close()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big").write_bytes(os.urandom(3 * MiB))  # above min: FastCDC cuts it
    proc = CLI(tmp_path / "repo", cli_env).run("backup", tmp_path / "src", check=False)
    assert proc.returncode == IntegrityError.exit_code, proc.stderr.decode()
    [line] = proc.stderr.decode().splitlines()
    assert line == "backupfs: repository config: chunk min 2097152 out of range (64-1048576)"
    assert not list((tmp_path / "repo" / "snapshots").iterdir())


@pytest.mark.parametrize(
    "field, value",
    [("compression", "brotli"), ("compression", "zstd:99"), ("pack_size", 0), ("pack_size", 1 << 40)],
)
def test_a_bad_stored_config_value_is_damage_not_a_usage_error(field: str, value: object) -> None:
    """The user typed none of it: a config body no writer makes is an integrity error (exit 4),
    when the repository is opened, not a usage error (exit 2) later."""
    backend = MemoryBackend()
    repo = Repository.init(backend, b"pw", kdf=FAST_KDF)
    body = {"chunker": list(repo.config.chunker), "pack_size": repo.config.pack_size, "compression": "lz4", field: value}
    _store_config_body(backend, repo, body)
    repo.close()
    with pytest.raises(IntegrityError, match="repository config"):
        Repository.open(backend, b"pw")


def test_prune_repack_bounds_a_blob_by_its_raw_length(bombed: tuple[CLI, Path], tmp_path: Path) -> None:
    """A data blob that inflates to 4 MiB (within the chunker's 8 MiB) where the index says
    21,000 bytes, in a pack prune repacks: refused from its size prefix against the index's
    raw_length, not inflated up to the chunker maximum first."""
    cli, src = bombed
    victim = src / "docs" / "victim.txt"
    data_id, _tree = blob_ids(cli, victim)
    replace_blob(cli.repo, data_id, DATA, bytes([LZ4]) + lz4_bomb(4 * MiB))
    first = json.loads(cli("snapshots", "--json").stdout)[0]["id"]
    (src / "other.txt").unlink()  # its blob, in the bomb's pack, is then unused: the pack is repacked
    cli("backup", src)
    cli("forget", first)
    proc = cli("prune", "--max-unused", "0", check=False)
    err = one_line(proc)
    assert proc.returncode == 4, err
    assert f"declares {4 * MiB} bytes, more than the {victim.stat().st_size}" in err and data_id.hex()[:16] in err, err
