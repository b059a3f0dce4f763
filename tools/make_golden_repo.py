"""Writes tests/golden_repo: a small repository of format version 1 (format.md), committed so that
any change to the bytes backupfs writes or reads fails tests/test_golden.py until the spec, the
independent reader (tests/golden_reader.py) and this repository change with it.

The inputs are fixed (every file's bytes, names, modes and times below; host, tags and snapshot
time; the password, chunker parameters and a cheap Argon2id). The repository's bytes are not
reproducible: the master key, repository id, salt and nonces are random, and inode numbers and
ctimes come from the machine that ran this. So run it only when the format changes on purpose,
and commit what it wrote.

It holds one of every stored object: config, a key file, a data pack (lz4-compressed and raw
chunks), a tree pack (zstd), an index file, a snapshot and a lock file; and in the snapshot a
hardlink (two names), an extended attribute, a sparse file, a symlink, a fifo, an empty file and
a name that is not UTF-8.

Usage (as root, on a file system with user xattrs and SEEK_HOLE, e.g. ext4):
    python tools/make_golden_repo.py [--out tests/golden_repo]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import blake3

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.ops.backup import Archiver, BackupOptions
from backupfs.repository.repo import Repository

PASSWORD = b"golden v1"
KDF = (1, 8192)  # Argon2id passes and bytes: libsodium's minimum, so the test opens it at once
CHUNKER = (1024, 4096, 16384)  # small chunks: a few KiB of text makes several
SOURCE = Path("/tmp/backupfs-golden")  # recorded in the snapshot: the same path on every run
HOST = "golden-host"
TAGS = ["golden"]
SNAPSHOT_TIME_NS = 1_700_000_000_123_456_789
MTIME_NS = 1_600_000_000_987_654_321
XATTR = (b"user.golden", b"value \x00\xff")
SPARSE_SIZE = 128 << 10  # data at 0 and at SPARSE_SECOND, holes between and after
SPARSE_SECOND = 64 << 10
SPARSE_PIECE = 4 << 10  # one file-system block of data at each place
TEXT_LINES = 400


def random_bytes(seed: bytes, n: int) -> bytes:
    return blake3.blake3(seed).digest(length=n)


def text() -> bytes:
    return b"".join(b"golden line %d of the compressible file\n" % i for i in range(TEXT_LINES))


def sparse_data() -> dict[int, bytes]:
    """Offset -> the bytes written there; everything else of the file is a hole."""
    return {0: random_bytes(b"sparse 0", SPARSE_PIECE), SPARSE_SECOND: random_bytes(b"sparse 1", SPARSE_PIECE)}


# path (relative to SOURCE) -> content, for regular files; mode of each entry
FILES: dict[bytes, bytes] = {
    b"text.txt": text(),
    b"random.bin": random_bytes(b"golden random", 6000),
    b"empty": b"",
    b"xattr.txt": b"a file with an extended attribute\n",
    b"hardlink-a": b"one file, two names\n",
    b"name-\xff": b"a name that is not UTF-8\n",
}
HARDLINK_B = b"sub/hardlink-b"  # a second name of hardlink-a
SYMLINK = (b"link", b"text.txt")
FIFO = b"sub/fifo"
SPARSE = b"sparse.img"
MODES: dict[bytes, int] = {
    b"": 0o755,
    b"sub": 0o750,
    b"text.txt": 0o644,
    b"random.bin": 0o600,
    b"empty": 0o444,
    b"xattr.txt": 0o640,
    b"hardlink-a": 0o644,
    b"name-\xff": 0o644,
    SPARSE: 0o644,
    FIFO: 0o620,
}


def make_source(root: Path) -> None:
    """The tree to back up, every byte and time fixed."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / "sub").mkdir()
    raw = os.fsencode(root)
    for name, data in FILES.items():
        with open(raw + b"/" + name, "wb") as f:
            f.write(data)
    os.link(raw + b"/hardlink-a", raw + b"/" + HARDLINK_B)
    os.setxattr(raw + b"/xattr.txt", XATTR[0], XATTR[1])
    with open(raw + b"/" + SPARSE, "wb") as f:
        f.truncate(SPARSE_SIZE)
        for offset, data in sparse_data().items():
            f.seek(offset)
            f.write(data)
    os.symlink(SYMLINK[1], raw + b"/" + SYMLINK[0])
    os.mkfifo(raw + b"/" + FIFO)
    for name, mode in MODES.items():
        os.chmod(raw + b"/" + name if name else raw, mode)
    # times last, deepest first: creating an entry changes its folder's mtime
    for name in [*FILES, HARDLINK_B, SYMLINK[0], FIFO, SPARSE, b"sub", b""]:
        os.utime(raw + b"/" + name if name else raw, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)


def make_repository(out: Path, source: Path = SOURCE, suite: str = "aegis256") -> None:
    """The repository at `out`, of a backup of the tree made at `source` (then removed).
    tests/test_golden.py also calls it, so that what backupfs writes today is read by the spec."""
    if out.exists():
        shutil.rmtree(out)
    make_source(source)
    backend = LocalBackend(str(out))
    repo = Repository.init(backend, PASSWORD, suite=suite, chunker=CHUNKER, compression="lz4", kdf=KDF)
    try:
        repo.lock()
        Archiver(repo, BackupOptions([str(source)], tags=TAGS, host=HOST, workers=1, time_ns=SNAPSHOT_TIME_NS)).run()
        kept = {name: backend.load(FileType.LOCK, name) for name, _ in backend.list(FileType.LOCK)}
    finally:
        repo.close()
    for name, data in kept.items():  # the lock file stays, as a crashed process would leave it
        backend.save(FileType.LOCK, name, data)
    shutil.rmtree(source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "golden_repo")
    args = parser.parse_args()
    make_repository(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out}: {total} bytes")


if __name__ == "__main__":
    main()
