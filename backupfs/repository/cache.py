"""A local cache of the master index, so `snapshots`, `ls` and `mount` start fast on any backend.

The cache stores the compact sorted tables of the master index together with the names of the
index files they cover, authenticated with a key derived from the master key: a tampered or
truncated cache is detected and rebuilt, never trusted. Blob ids, pack ids and offsets are all it
holds - no file names or contents.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import struct
import time

import blake3

from backupfs.repository.localfile import write_atomic
from backupfs.repository.masterindex import ID_SIZE, REC, CompactTable

MAGIC = b"BFSIDXC1"
_HEAD = struct.Struct("<8sIIQ")  # magic, covered index files, packs, blobs
# bford.info/cachedir: backup tools (backupfs --exclude-caches, restic, borg, tar) skip the folder
CACHEDIR_TAG = (
    b"Signature: 8a477f597d28d172789f06886806bc55\n"
    b"# This file is a cache directory tag created by backupfs.\n"
    b"# For information about cache directory tags, see https://bford.info/cachedir/\n"
)
MAX_AGE = 30 * 86400  # seconds: the cache of a repository not opened for this long is removed
_REPO_DIR = re.compile(r"[0-9a-f]{64}")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "backupfs")


@dataclasses.dataclass(frozen=True, slots=True)
class CacheDir:
    repo_id: str
    path: str
    last_used_ns: int  # the folder's mtime: touched each time the repository is opened
    size: int | None


def prepare_cache(root: str, repo_id: bytes, max_age: float = MAX_AGE) -> list[str]:
    """Marks `root` with CACHEDIR.TAG, records that this repository's cache is in use, and removes
    the caches of repositories not opened for `max_age` seconds (as restic's --cleanup-cache,
    always on). Best effort: a cache problem never fails a command. Returns the ids removed."""
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        tag = os.path.join(root, "CACHEDIR.TAG")
        if not os.path.exists(tag):
            write_atomic(tag, CACHEDIR_TAG, mode=0o644, best_effort=False)
        mine = os.path.join(root, repo_id.hex())
        os.makedirs(mine, mode=0o700, exist_ok=True)
        os.utime(mine)
    except OSError:
        return []
    return [
        c.repo_id
        for c in list_caches(root, sizes=False)
        if c.repo_id != repo_id.hex() and is_old(c, max_age) and remove(c)
    ]


def list_caches(root: str, sizes: bool = True) -> list[CacheDir]:
    """The repository caches under `root`, least recently used first."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    out = []
    for name in names:
        path = os.path.join(root, name)
        if not _REPO_DIR.fullmatch(name):
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            out.append(CacheDir(name, path, st.st_mtime_ns, _du(path) if sizes else None))
    return sorted(out, key=lambda c: (c.last_used_ns, c.repo_id))


def is_old(cache: CacheDir, max_age: float = MAX_AGE, now: float | None = None) -> bool:
    return ((now if now is not None else time.time()) - cache.last_used_ns / 1e9) > max_age


def remove(cache: CacheDir) -> bool:
    """Renamed first (atomic), then deleted: a process that opens the repository meanwhile starts a
    fresh cache instead of writing into one being deleted."""
    doomed = f"{cache.path}.removing-{os.getpid()}"
    try:
        os.rename(cache.path, doomed)
    except OSError:
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def _du(path: str) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, f)).st_size
    return total


class IndexCache:
    def __init__(self, root: str, repo_id: bytes, id_key: bytes) -> None:
        self.dir = os.path.join(root, repo_id.hex())
        self._mac_key = blake3.blake3(b"bfs1 index cache", key=id_key).digest()

    @property
    def path(self) -> str:
        return os.path.join(self.dir, "index.cache")

    def load(self) -> tuple[set[str], CompactTable] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        if len(data) < _HEAD.size + 32:
            return None
        body, mac = memoryview(data)[:-32], data[-32:]
        if blake3.blake3(body, key=self._mac_key).digest() != mac:
            return None
        magic, nnames, npacks, nblobs = _HEAD.unpack_from(body)
        if magic != MAGIC:
            return None
        pos = _HEAD.size
        need = pos + 32 * nnames + ID_SIZE * npacks + (ID_SIZE + REC.size) * nblobs
        if need != len(body):
            return None
        names = {bytes(body[pos + 32 * i : pos + 32 * (i + 1)]).hex() for i in range(nnames)}
        pos += 32 * nnames
        packs = body[pos : pos + ID_SIZE * npacks]
        pos += ID_SIZE * npacks
        ids = body[pos : pos + ID_SIZE * nblobs]
        pos += ID_SIZE * nblobs
        recs = body[pos:]
        return names, CompactTable(ids, recs, packs)

    def store(self, covered: list[str], table: CompactTable) -> None:
        """Atomic replace; a failure to write the cache is never an error for the command."""
        parts = [
            _HEAD.pack(MAGIC, len(covered), len(table.packs) // ID_SIZE, table.count),
            b"".join(bytes.fromhex(n) for n in covered),
            bytes(table.packs),
            bytes(table.ids),
            bytes(table.recs),
        ]
        body = b"".join(parts)
        data = body + blake3.blake3(body, key=self._mac_key).digest()
        write_atomic(self.path, data)
