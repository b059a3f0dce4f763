"""An in-memory backend for fast unit tests; never the only proof of a feature."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from backupfs.backends import layout
from backupfs.backends.base import STALE_TEMPORARY_AGE, BackendInfo, FileType
from backupfs.errors import AlreadyExists, BackendError, NotFound

_INFO = BackendInfo(local=True, append_only=False, sweeps_temporaries=False)


class MemoryBackend:
    def __init__(self, location: str = "memory:") -> None:
        self._location = location
        self._files: dict[tuple[FileType, str], bytes] = {}
        self._lock = threading.Lock()
        self._created = False

    @property
    def location(self) -> str:
        return self._location

    def exists(self) -> bool:
        return (FileType.CONFIG, layout.CONFIG_NAME) in self._files

    def create(self) -> None:
        if self.exists():
            raise AlreadyExists("a repository already exists here")
        self._created = True

    def save(self, ftype: FileType, name: str, data: bytes | memoryview) -> None:
        layout.check_name(ftype, name)
        key = (ftype, name)
        with self._lock:
            if ftype is FileType.CONFIG and key in self._files:
                raise AlreadyExists("config already exists")
            self._files[key] = bytes(data)

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        layout.check_name(ftype, name)
        key = (ftype, name)
        with self._lock:
            data = self._files.get(key)
        if data is None:
            raise NotFound(f"{ftype.value}/{name} not found")
        end = len(data) if length is None else offset + length
        if end > len(data):
            raise BackendError(f"{ftype.value}/{name}: short read")
        return data[offset:end]

    def stat(self, ftype: FileType, name: str) -> int:
        return len(self.load(ftype, name))

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        with self._lock:
            items = [(n, len(d)) for (t, n), d in self._files.items() if t is ftype]
        yield from items

    def list_foreign(self) -> Iterator[str]:
        yield from ()  # it stores only what the layout can name

    def remove(self, ftype: FileType, name: str) -> None:
        layout.check_name(ftype, name)
        with self._lock:
            if self._files.pop((ftype, name), None) is None:
                raise NotFound(f"{ftype.value}/{name} not found")

    def info(self) -> BackendInfo:
        return _INFO

    def remove_stale_temporaries(self, max_age: float = STALE_TEMPORARY_AGE) -> int:
        return 0

    def close(self) -> None:
        pass
