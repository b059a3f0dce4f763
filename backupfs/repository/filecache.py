"""Local copies of small, hot repository files (snapshots, tree packs) for remote repositories.

`snapshots`, `ls` and the mount read every snapshot file and walk trees again and again; over SFTP
or S3 each of those is a round trip. A cached file is checked against its name (the BLAKE3 hash
of its bytes) when it is stored and when it is read whole; ranged reads of cached tree packs are
authenticated blob by blob by the AEAD anyway. Cached files are therefore verified, not trusted.
"""

from __future__ import annotations

import contextlib
import os

from backupfs.backends.base import FileType
from backupfs.crypto import file_id
from backupfs.repository.localfile import TEMP_MARK, write_atomic


class FileCache:
    def __init__(self, root: str, repo_id: bytes) -> None:
        self.dir = os.path.join(root, repo_id.hex())

    def _path(self, ftype: FileType, name: str) -> str:
        return os.path.join(self.dir, ftype.value, name)

    def get(self, ftype: FileType, name: str) -> bytes | None:
        try:
            with open(self._path(ftype, name), "rb") as f:
                data = f.read()
        except OSError:
            return None
        if file_id(data) != name:
            self.remove(ftype, name)
            return None
        return data

    def read_range(self, ftype: FileType, name: str, offset: int, length: int) -> bytes | None:
        try:
            fd = os.open(self._path(ftype, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.pread(fd, length, offset)
        except OSError:
            return None
        finally:
            os.close(fd)
        return data if len(data) == length else None

    def put(self, ftype: FileType, name: str, data: bytes) -> None:
        """Best effort: a full disk or a read-only home must not fail the command."""
        if file_id(data) != name:
            return
        write_atomic(self._path(ftype, name), data)

    def remove(self, ftype: FileType, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._path(ftype, name))

    def forget_except(self, ftype: FileType, keep: set[str]) -> None:
        """Drops cached files the repository no longer has (forgotten snapshots, pruned packs)."""
        try:
            names = os.listdir(os.path.join(self.dir, ftype.value))
        except OSError:
            return
        for name in names:
            if name not in keep and TEMP_MARK not in name:
                self.remove(ftype, name)
