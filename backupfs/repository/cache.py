"""A local cache of the master index, so `snapshots`, `ls` and `mount` start fast on any backend.

The cache stores the compact sorted tables of the master index together with the names of the
index files they cover, authenticated with a key derived from the master key: a tampered or
truncated cache is detected and rebuilt, never trusted. Blob ids, pack ids and offsets are all it
holds - no file names or contents.
"""

from __future__ import annotations

import contextlib
import os
import struct

import blake3

from backupfs.repository.masterindex import ID_SIZE, REC, CompactTable

MAGIC = b"BFSIDXC1"
_HEAD = struct.Struct("<8sIIQ")  # magic, covered index files, packs, blobs


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "backupfs")


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
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
