"""Counting of what a command asks of its storage: requests, bytes down and up, requests at once.

One wrapper at the Backend layer, under the retry wrapper (`open_backend` stacks them so), so
that every attempt the storage saw is counted once and nowhere else: the figures `--json` and
the benchmarks report are what crossed the link, not what the layers above believe they asked.

A request is one call of a Backend method: `load`, `save`, `stat`, `remove`, `exists`,
`create`, one whole `list` or `list_foreign` (`info` is not counted: only rest: asks its server,
once). Over SFTP a call is a few protocol
messages (open, reads, close), over S3 one HTTP request (a listing: one per 1,000 names); the
count is what the caller's latency pays for, not packets.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from backupfs.backends.base import STALE_TEMPORARY_AGE, Backend, BackendInfo, FileType
from backupfs.backends.retry import RetryBackend

T = TypeVar("T")

# ObjectLock's methods that ask the storage (set_retention only changes a setting here).
_COUNTED_EXTRAS = frozenset({"retention_support", "retention", "extend_retention"})
# Wrappers a counter may sit under (retry, counting): more than this is a loop, not a stack.
_MAX_WRAPPERS = 8


@dataclasses.dataclass(frozen=True, slots=True)
class Transfer:
    """What crossed the link so far. `peak_in_flight`: most requests that were under way at once
    (shows whether a reader kept the link busy)."""

    requests: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    peak_in_flight: int = 0

    def json(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes_down": self.bytes_down, "bytes_up": self.bytes_up}

    def __add__(self, other: Transfer) -> Transfer:
        return Transfer(
            self.requests + other.requests,
            self.bytes_down + other.bytes_down,
            self.bytes_up + other.bytes_up,
            max(self.peak_in_flight, other.peak_in_flight),
        )


class CountingBackend:
    """Passes every call to `inner` and counts it; thread-safe (one lock, held for additions only).

    `on_load`, when set, is told (type, name, offset, length) of each load as it starts: tests
    observe the order and overlap of a real backend's reads through it."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.on_load: Callable[[FileType, str, int, int | None], None] | None = None
        self._lock = threading.Lock()
        self._requests = 0
        self._down = 0
        self._up = 0
        self._in_flight = 0
        self._peak = 0

    @property
    def location(self) -> str:
        return self.inner.location

    def transfer(self) -> Transfer:
        with self._lock:
            return Transfer(self._requests, self._down, self._up, self._peak)

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def _count(self, fn: Callable[[], T], up: int = 0) -> T:
        with self._lock:
            self._requests += 1
            self._up += up  # sent whether or not the call then fails
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
        try:
            return fn()
        finally:
            with self._lock:
                self._in_flight -= 1

    def _got(self, n: int) -> None:
        with self._lock:
            self._down += n

    def create(self) -> None:
        self._count(self.inner.create)

    def exists(self) -> bool:
        return self._count(self.inner.exists)

    def save(self, ftype: FileType, name: str, data: bytes | memoryview) -> None:
        self._count(lambda: self.inner.save(ftype, name, data), up=memoryview(data).nbytes)

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if self.on_load is not None:
            self.on_load(ftype, name, offset, length)
        data = self._count(lambda: self.inner.load(ftype, name, offset, length))
        self._got(len(data))
        return data

    def stat(self, ftype: FileType, name: str) -> int:
        return self._count(lambda: self.inner.stat(ftype, name))

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        """Counted as one request when the listing starts (a paged listing is still one call)."""
        entries = self._count(lambda: self.inner.list(ftype))
        try:
            yield from entries
        finally:
            close = getattr(entries, "close", None)
            if close is not None:
                close()

    def remove(self, ftype: FileType, name: str) -> None:
        self._count(lambda: self.inner.remove(ftype, name))

    def list_foreign(self) -> Iterator[str]:
        return self._count(lambda: iter(list(self.inner.list_foreign())))

    def info(self) -> BackendInfo:
        """Not counted: only rest: ever asks its server (once), the others answer themselves."""
        return self.inner.info()

    def remove_stale_temporaries(self, max_age: float = STALE_TEMPORARY_AGE) -> int:
        return self._count(lambda: self.inner.remove_stale_temporaries(max_age))

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> object:
        """Whatever else the storage offers: ObjectLock's requests (counted; absent where the
        storage has none, so `isinstance(_, ObjectLock)` answers as for the storage itself) and
        a backend's own settings."""
        value = getattr(self.inner, name)
        if name in _COUNTED_EXTRAS and callable(value):
            call = value

            def counted(*args: object, **kwargs: object) -> object:
                return self._count(lambda: call(*args, **kwargs))

            return counted
        return value


def counter_of(backend: object) -> CountingBackend | None:
    """The CountingBackend in a stack of wrappers (each keeps the one below as `inner`)."""
    seen = 0
    while backend is not None and seen < _MAX_WRAPPERS:
        if isinstance(backend, CountingBackend):
            return backend
        backend = getattr(backend, "inner", None)
        seen += 1
    return None


def innermost(backend: object) -> object:
    """The storage itself under its wrappers (tests reach into an SFTP or S3 backend so)."""
    for _ in range(_MAX_WRAPPERS):
        if not isinstance(backend, RetryBackend | CountingBackend):
            return backend
        backend = backend.inner
    return backend


def transfer_of(*backends: object) -> Transfer:
    """What the counted backends among `backends` transferred, summed (copy has two)."""
    total = Transfer()
    for backend in backends:
        counter = counter_of(backend)
        if counter is not None:
            total = total + counter.transfer()
    return total
