"""A single-flight loader: an LRU of loaded objects where concurrent misses share one load.

The mount's trees and chunks each go through one. The loads run in the loader's own worker
threads, not through `trio.to_thread`: a finished job wakes the trio loop only when a request is
waiting for one of its values. A prefetch that nobody waits for yet costs the loop no wake-up at
all; its values are picked up the next time the loader is used. Measured on this kind of machine
(a VM), every hand-off between threads costs 100-300 µs of CPU in wake-ups, more than decrypting
a small file, and each thread job used to cost two of them (start and delivery).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Generic, TypeVar

import trio

log = logging.getLogger(__name__)

V = TypeVar("V")

_STOP = None  # what a worker thread takes from its queue to end


class _Job(Generic[V]):
    """Keys loaded together in one worker thread. `awaited` and `finished` are the hand-shake
    between the loop and the worker, read and written under the loader's lock."""

    __slots__ = ("awaited", "finished", "keys", "pendings", "then")

    def __init__(self, keys: list[bytes], then: Callable[[bytes, V], None] | None) -> None:
        self.keys = keys
        self.pendings: list[_Pending[V]] = []
        self.then = then
        self.awaited = False  # a request waits for one of its values: wake the loop when done
        self.finished = False


class _Pending(Generic[V]):
    __slots__ = ("delivered", "error", "event", "job", "keep", "value")

    def __init__(self, job: _Job[V], keep: bool) -> None:
        self.job = job
        self.event: trio.Event | None = None  # made when a request waits for it
        self.delivered = False
        self.value: V | None = None
        self.error: Exception | None = None
        self.keep = keep  # somebody asked for it (not only a prefetch that pushes it): cache it


class Loader(Generic[V]):
    """An LRU of loaded objects bounded by total cost, where concurrent misses for one key share
    one load, and a prefetch is a load that nobody awaits yet. Loads run in `workers` threads of
    the loader's own; a prefetch of several keys is one job. Everything but the loading itself
    runs on the trio loop; the threads hand their results back through a list under a lock."""

    def __init__(
        self,
        load: Callable[[bytes], V],
        cost: Callable[[V], int],
        max_cost: int,
        workers: int,
        load_many: Callable[[list[bytes]], list[V | Exception]] | None = None,
        name: str = "bfs-mount-load",
    ) -> None:
        self._load = load
        self._load_many = load_many  # one job's keys at once (fewer backend requests)
        self._cost = cost
        self._max_cost = max_cost
        self._workers = workers
        self._name = name
        self._items: OrderedDict[bytes, V] = OrderedDict()
        self._used = 0
        self._pending: dict[bytes, _Pending[V]] = {}
        self._jobs: queue.SimpleQueue[_Job[V] | None] = queue.SimpleQueue()
        self._then_jobs: queue.SimpleQueue[tuple[Callable[[bytes, V], None], list[tuple[bytes, V]]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()  # guards _done, _wake_scheduled and the jobs' hand-shake
        self._done: list[tuple[_Job[V], list[tuple[V | None, Exception | None]]]] = []
        self._wake_scheduled = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._threads: list[threading.Thread] = []
        self._then_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        """Starts the worker threads; call it on the trio loop that will use the loader."""
        self._token = trio.lowlevel.current_trio_token()
        for i in range(self._workers - len(self._threads)):
            t = threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Lets the threads end once their current job is done (a slow backend read is not
        waited for: they are daemon threads and touch nothing of the loop's)."""
        for _ in self._threads:
            self._jobs.put(_STOP)
        self._threads.clear()
        with self._lock:
            if self._then_thread is not None:
                self._then_jobs.put(_STOP)
                self._then_thread = None
            self._token = None

    # ------------------------------------------------------------------ on the trio loop

    @property
    def used(self) -> int:
        self._collect()
        return self._used

    def __len__(self) -> int:
        self._collect()
        return len(self._items)

    def cached(self, key: bytes) -> V | None:
        if self._done:
            self._collect()
        return self._items.get(key)

    def discard(self, key: bytes) -> None:
        value = self._items.pop(key, None)
        if value is not None:
            self._used -= self._cost(value)

    async def get(self, key: bytes) -> V:
        """The value for `key`, cached until evicted or discarded."""
        if self._done:
            self._collect()
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
            return value
        p = self._pending.get(key) or self._start([key])[0]
        p.keep = True
        if not p.delivered:
            with self._lock:
                finished = p.job.finished
                if not finished:
                    p.job.awaited = True
            if finished:
                self._collect()
            else:
                if p.event is None:
                    p.event = trio.Event()
                await p.event.wait()
        if p.error is not None:
            raise p.error
        return p.value  # type: ignore[return-value]

    def prefetch(
        self,
        keys: Sequence[bytes],
        max_pending: int,
        *,
        unkept: Collection[bytes] = (),
        then: Callable[[bytes, V], None] | None = None,
    ) -> None:
        """Starts loading those of `keys` not cached or loading yet, as one job, unless
        `max_pending` keys are loading already. `then(key, value)` runs in a thread of its own
        once the job's values can be had by the loop; a value of `unkept` is cached only if a
        request asks for it (one that `then` hands on elsewhere)."""
        if self._done:
            self._collect()
        todo = [k for k in dict.fromkeys(keys) if k not in self._items and k not in self._pending]
        if todo and len(self._pending) < max_pending:
            self._start(todo, unkept, then)

    def _start(
        self, keys: list[bytes], unkept: Collection[bytes] = (), then: Callable[[bytes, V], None] | None = None
    ) -> list[_Pending[V]]:
        if self._token is None:
            raise RuntimeError("Vfs.serve() is not running")
        job: _Job[V] = _Job(keys, then)
        for key in keys:
            p = _Pending(job, key not in unkept)
            self._pending[key] = p
            job.pendings.append(p)
        self._jobs.put(job)
        return job.pendings

    def _collect(self) -> None:
        """Takes over what the worker threads finished: values into the cache, waiters woken."""
        with self._lock:
            done, self._done = self._done, []
            self._wake_scheduled = False
        for job, results in done:
            for key, p, (value, error) in zip(job.keys, job.pendings, results, strict=True):
                p.value, p.error, p.delivered = value, error, True
                if self._pending.get(key) is p:
                    del self._pending[key]
                if value is not None and p.keep:
                    self._insert(key, value)
                if p.event is not None:
                    p.event.set()

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

    # ------------------------------------------------------------------ in the worker threads

    def _work(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            try:
                results = self._load_all(job.keys)
            except BaseException as exc:  # a job must finish, or its waiters hang
                error = exc if isinstance(exc, Exception) else RuntimeError(f"load ended: {exc!r}")
                results = [(None, error)] * len(job.keys)
            with self._lock:
                self._done.append((job, results))
                job.finished = True
                wake = job.awaited and not self._wake_scheduled
                if wake:
                    self._wake_scheduled = True
            if wake:
                self._wake_loop()
            if job.then is not None:
                # Only once the values can be had by the loop, and in a thread of its own:
                # `then` may wait for a request that is waiting for one of these values, or for
                # a job queued behind this one.
                loaded = [(key, value) for key, (value, _) in zip(job.keys, results, strict=True) if value is not None]
                self._then_jobs.put((job.then, loaded))
                self._ensure_then_thread()

    def _wake_loop(self) -> None:
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(self._collect)
        except trio.RunFinishedError:
            pass  # the mount is ending: nobody is waiting any more

    def _ensure_then_thread(self) -> None:
        with self._lock:
            if self._then_thread is not None or self._token is None:
                return
            self._then_thread = threading.Thread(target=self._then_work, name=f"{self._name}-after", daemon=True)
            self._then_thread.start()

    def _then_work(self) -> None:
        while (item := self._then_jobs.get()) is not _STOP:
            then, loaded = item
            for key, value in loaded:
                try:
                    then(key, value)
                except Exception as exc:  # an optimisation only: the value was delivered anyway
                    log.debug("after loading %s: %s", key.hex(), exc)

    def _load_all(self, keys: list[bytes]) -> list[tuple[V | None, Exception | None]]:
        try:
            if self._load_many is not None and len(keys) > 1:
                many = self._load_many(keys)
                if len(many) == len(keys):
                    return [(None, r) if isinstance(r, Exception) else (r, None) for r in many]
                log.debug("batch load gave %d results for %d keys", len(many), len(keys))
        except Exception as exc:  # the batch as a whole failed: each key on its own
            log.debug("batch load failed: %s", exc)
        out: list[tuple[V | None, Exception | None]] = []
        for key in keys:
            try:
                out.append((self._load(key), None))
            except Exception as exc:
                out.append((None, exc))
        return out
