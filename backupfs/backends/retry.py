"""Retrying of transient backend failures, shared by every backend `open_backend` returns.

Only TransientBackendError is retried: a NotFound, AlreadyExists or plain BackendError will not
change by asking again, and retrying it would only delay the error message. Delays are "full
jitter" exponential backoff (a uniform random delay up to base * 2**attempt, capped), which
spreads the retries of many threads hitting the same outage instead of synchronising them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from backupfs.backends.base import (
    STALE_TEMPORARY_AGE,
    Backend,
    BackendInfo,
    FileType,
    ObjectLock,
    RetentionSupport,
)
from backupfs.errors import AlreadyExists, BackendError, NotFound, TransientBackendError

log = logging.getLogger(__name__)

T = TypeVar("T")


class RetryBackend:
    """Wraps a backend and retries its transient failures `attempts` times in total.

    It also implements `ObjectLock` for every backend: forwarded (and retried) where the wrapped
    backend has it, and "not supported" where it has not, so callers need not unwrap it.
    """

    def __init__(
        self,
        inner: Backend,
        attempts: int = 6,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._rng = rng or random.Random()

    @property
    def location(self) -> str:
        return self.inner.location

    def delay(self, attempt: int) -> float:
        """Backoff before retry number `attempt` (0-based): uniform in [0, min(max, base*2**n)]."""
        return self._rng.uniform(0.0, min(self.max_delay, self.base_delay * 2**attempt))

    def _backoff(self, attempt: int, what: str, exc: TransientBackendError) -> None:
        pause = self.delay(attempt)
        log.warning("%s failed (%s); retry %d of %d in %.1f s", what, exc, attempt + 1, self.attempts - 1, pause)
        self._sleep(pause)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(self.attempts):
            try:
                return fn()
            except TransientBackendError as exc:
                if attempt == self.attempts - 1:
                    raise
                self._backoff(attempt, what, exc)
        raise AssertionError("unreachable")

    def create(self) -> None:
        self._call(f"create {self.location}", self.inner.create)

    def exists(self) -> bool:
        return self._call(f"check {self.location}", self.inner.exists)

    def save(self, ftype: FileType, name: str, data: bytes | memoryview) -> None:
        failed = False

        def attempt() -> None:
            nonlocal failed
            try:
                self.inner.save(ftype, name, data)
            except TransientBackendError:
                failed = True
                raise
            except AlreadyExists:
                # An earlier attempt may have written the config before its reply was lost; then
                # the config in place is ours (it holds random bytes, so equality identifies it).
                if not (failed and bytes(data) == self.inner.load(ftype, name)):
                    raise

        self._call(f"save {ftype.value}/{name}", attempt)

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(f"load {ftype.value}/{name}", lambda: self.inner.load(ftype, name, offset, length))

    def stat(self, ftype: FileType, name: str) -> int:
        return self._call(f"stat {ftype.value}/{name}", lambda: self.inner.stat(ftype, name))

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        """Retried only until the first entry is out: a restart would yield entries twice."""
        for attempt in range(self.attempts):
            started = False
            entries = self.inner.list(ftype)
            try:
                for entry in entries:
                    started = True
                    yield entry
                return
            except TransientBackendError as exc:
                if started or attempt == self.attempts - 1:
                    raise
                self._backoff(attempt, f"list {ftype.value}", exc)
            finally:
                close = getattr(entries, "close", None)
                if close is not None:
                    close()

    def list_foreign(self) -> Iterator[str]:
        """Read whole before the first path is out, so that a retry never yields one twice."""
        yield from self._call("list foreign files", lambda: list(self.inner.list_foreign()))

    def remove(self, ftype: FileType, name: str) -> None:
        failed = False

        def attempt() -> None:
            nonlocal failed
            try:
                self.inner.remove(ftype, name)
            except TransientBackendError:
                failed = True
                raise
            except NotFound:
                # After a failure whose reply was lost the file is most likely gone because of
                # that very attempt; callers (prune, unlock) want it gone either way.
                if not failed:
                    raise

        self._call(f"remove {ftype.value}/{name}", attempt)

    def info(self) -> BackendInfo:
        """The wrapped backend's: retrying changes what a backend can do in no way."""
        return self._call(f"ask {self.location} what it can do", self.inner.info)

    def remove_stale_temporaries(self, max_age: float = STALE_TEMPORARY_AGE) -> int:
        return self._call("remove stale temporary files", lambda: self.inner.remove_stale_temporaries(max_age))

    def close(self) -> None:
        self.inner.close()

    # --- ObjectLock ---

    def _lock(self) -> ObjectLock:
        if not isinstance(self.inner, ObjectLock):
            raise BackendError(f"{self.location} has no Object Lock (only s3: repositories can have one)")
        return self.inner

    def retention_support(self) -> RetentionSupport:
        if not isinstance(self.inner, ObjectLock):
            return RetentionSupport(False)
        return self._call(f"ask {self.location} about Object Lock", self.inner.retention_support)

    def set_retention(self, mode: str | None, seconds: float = 0.0) -> None:
        if mode is not None or isinstance(self.inner, ObjectLock):
            self._lock().set_retention(mode, seconds)

    def retention(self, ftype: FileType, name: str) -> float | None:
        lock = self._lock()
        return self._call(f"retention of {ftype.value}/{name}", lambda: lock.retention(ftype, name))

    def extend_retention(self, ftype: FileType, name: str, until: float) -> None:
        lock = self._lock()
        self._call(f"extend retention of {ftype.value}/{name}", lambda: lock.extend_retention(ftype, name, until))
