"""An in-memory backend for fast unit tests; never the only proof of a feature.

With `object_lock=True` it imitates S3 Object Lock (backends.base.ObjectLock) against an
injectable clock, so that retention logic can be tested through days in microseconds; the real
thing is proven against Ceph RGW (tests/backends/test_object_lock.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from backupfs.backends import layout
from backupfs.backends.base import RETENTION_MODES, STALE_TEMPORARY_AGE, BackendInfo, FileType, RetentionSupport
from backupfs.errors import AlreadyExists, BackendError, NotFound, UnderRetention

_INFO = BackendInfo(local=True, append_only=False, sweeps_temporaries=False)


class MemoryBackend:
    def __init__(
        self, location: str = "memory:", *, object_lock: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        self._location = location
        self._files: dict[tuple[FileType, str], bytes] = {}
        self._lock = threading.Lock()
        self._created = False
        self._object_lock = object_lock
        self._clock = clock
        self._retention: float | None = None  # seconds from each save
        self._until: dict[tuple[FileType, str], float] = {}

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
            if self._retention is not None and ftype is not FileType.LOCK:
                self._until[key] = max(self._until.get(key, 0.0), self._clock() + self._retention)

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
            if (ftype, name) not in self._files:
                raise NotFound(f"{ftype.value}/{name} not found")
            until = self._until.get((ftype, name), 0.0)
            if until > self._clock():
                raise UnderRetention(f"{ftype.value}/{name} is under retention", until)
            del self._files[(ftype, name)]
            self._until.pop((ftype, name), None)

    def info(self) -> BackendInfo:
        return _INFO

    def remove_stale_temporaries(self, max_age: float = STALE_TEMPORARY_AGE) -> int:
        return 0

    def close(self) -> None:
        pass

    # --- ObjectLock, imitated ---

    def retention_support(self) -> RetentionSupport:
        return RetentionSupport(self._object_lock)

    def set_retention(self, mode: str | None, seconds: float = 0.0) -> None:
        if mode is not None and (not self._object_lock or mode not in RETENTION_MODES or seconds <= 0):
            raise BackendError(f"no retention {mode!r} for {seconds} s here")
        self._retention = None if mode is None else seconds

    def retention(self, ftype: FileType, name: str) -> float | None:
        with self._lock:
            if (ftype, name) not in self._files:
                raise NotFound(f"{ftype.value}/{name} not found")
            return self._until.get((ftype, name))

    def extend_retention(self, ftype: FileType, name: str, until: float) -> None:
        if not self._object_lock:
            raise BackendError("no Object Lock here")
        with self._lock:
            if (ftype, name) not in self._files:
                raise NotFound(f"{ftype.value}/{name} not found")
            self._until[(ftype, name)] = max(self._until.get((ftype, name), 0.0), until)
