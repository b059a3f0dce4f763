"""A single-flight loader: an LRU of loaded objects where concurrent misses share one load.

The mount's trees and chunks each go through one; the loads themselves run in worker threads.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import trio

log = logging.getLogger(__name__)

V = TypeVar("V")


class _Pending(Generic[V]):
    __slots__ = ("done", "error", "keep", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: V | None = None
        self.error: Exception | None = None
        self.keep = False  # somebody asked for it (not only a prefetch that pushes it): cache it


class Loader(Generic[V]):
    """An LRU of loaded objects bounded by total cost, where concurrent misses for one key share
    one load, and a prefetch is a load that nobody awaits yet. Loads run in worker threads; a
    prefetch of several keys is one thread job, because each hop between the trio loop and a
    thread costs the loop more Python time than decrypting a small blob does."""

    def __init__(
        self,
        load: Callable[[bytes], V],
        cost: Callable[[V], int],
        max_cost: int,
        limiter: trio.CapacityLimiter,
        load_many: Callable[[list[bytes]], list[V | Exception]] | None = None,
    ) -> None:
        self._load = load
        self._load_many = load_many  # one job's keys at once (fewer backend requests)
        self._cost = cost
        self._max_cost = max_cost
        self._limiter = limiter
        self._then_limiter = trio.CapacityLimiter(1)
        self._items: OrderedDict[bytes, V] = OrderedDict()
        self._used = 0
        self._pending: dict[bytes, _Pending[V]] = {}
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    @property
    def used(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._items)

    def cached(self, key: bytes) -> V | None:
        return self._items.get(key)

    def discard(self, key: bytes) -> None:
        value = self._items.pop(key, None)
        if value is not None:
            self._used -= self._cost(value)

    async def get(self, key: bytes) -> V:
        """The value for `key`, cached until evicted or discarded."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
            return value
        p = self._pending.get(key) or self._start([key], False)[0]
        p.keep = True
        await p.done.wait()
        if p.error is not None:
            raise p.error
        return p.value  # type: ignore[return-value]

    def prefetch(
        self,
        keys: Sequence[bytes],
        max_pending: int,
        *,
        keep: bool = True,
        then: Callable[[bytes, V], None] | None = None,
    ) -> None:
        """Starts loading those of `keys` not cached or loading yet, as one job, unless
        `max_pending` keys are loading already. `then(key, value)` runs in the worker thread
        once the job's values are delivered; with `keep=False` a value is cached only if a reader
        asked for it."""
        todo = [k for k in dict.fromkeys(keys) if k not in self._items and k not in self._pending]
        if todo and len(self._pending) < max_pending:
            self._start(todo, keep, then)

    def _start(
        self, keys: list[bytes], keep: bool, then: Callable[[bytes, V], None] | None = None
    ) -> list[_Pending[V]]:
        if self._nursery is None:
            raise RuntimeError("Vfs.serve() is not running")
        pendings: list[_Pending[V]] = []
        for key in keys:
            p: _Pending[V] = _Pending()
            p.keep = keep
            self._pending[key] = p
            pendings.append(p)
        self._nursery.start_soon(self._run, keys, pendings, then)
        return pendings

    async def _run(
        self, keys: list[bytes], pendings: list[_Pending[V]], then: Callable[[bytes, V], None] | None
    ) -> None:
        results = await trio.to_thread.run_sync(self._load_all, keys, limiter=self._limiter)
        for key, p, (value, error) in zip(keys, pendings, results, strict=True):
            p.value, p.error = value, error
            del self._pending[key]
            if value is not None and p.keep:
                self._insert(key, value)
            p.done.set()
        if then is not None:
            # Only after the values are delivered, and in a thread of its own: `then` may wait
            # for a request that is waiting for one of these values (or for a loader thread).
            loaded = [(key, value) for key, (value, _) in zip(keys, results, strict=True) if value is not None]
            await trio.to_thread.run_sync(self._call_all, then, loaded, limiter=self._then_limiter)

    @staticmethod
    def _call_all(then: Callable[[bytes, V], None], loaded: list[tuple[bytes, V]]) -> None:
        for key, value in loaded:
            try:
                then(key, value)
            except Exception as exc:  # an optimisation only: the value was delivered anyway
                log.debug("after loading %s: %s", key.hex(), exc)

    def _load_all(self, keys: list[bytes]) -> list[tuple[V | None, Exception | None]]:
        if self._load_many is not None and len(keys) > 1:
            return [(None, r) if isinstance(r, Exception) else (r, None) for r in self._load_many(keys)]
        out: list[tuple[V | None, Exception | None]] = []
        for key in keys:
            try:
                out.append((self._load(key), None))
            except Exception as exc:
                out.append((None, exc))
        return out

    def _insert(self, key: bytes, value: V) -> None:
        """Evicts the least recently used; an item larger than the bound is kept alone (a huge
        folder must not be decoded again for each of its files)."""
        if key in self._items:
            return
        self._items[key] = value
        self._used += self._cost(value)
        while self._used > self._max_cost and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._used -= self._cost(old)
