"""The mount's single-flight loader (backupfs.mount.loader) with its own worker threads.

Real threads and a real trio loop; the loads are plain functions. What is proved: a request gets
its value or its error, never waits forever, and concurrent requests for one key share one load.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import pytest
import trio

from backupfs.mount.loader import Loader

HANG_GUARD = 60.0  # seconds: a loader that hangs fails the test instead of stalling the suite


def run_with(loader: Loader[bytes], body: Callable[[Loader[bytes]], Awaitable[None]]) -> None:
    async def main() -> None:
        loader.start()
        try:
            with trio.fail_after(HANG_GUARD):
                await body(loader)
        finally:
            loader.stop()

    trio.run(main)


def test_concurrent_requests_for_one_key_share_one_load() -> None:
    calls: list[bytes] = []
    gate = threading.Event()

    def load(key: bytes) -> bytes:
        calls.append(key)
        gate.wait(HANG_GUARD)
        return key * 2

    got: list[bytes] = []

    async def body(loader: Loader[bytes]) -> None:
        async def one() -> None:
            got.append(await loader.get(b"k"))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
            await trio.sleep(0.05)  # every request is waiting (the gate holds the load)
            gate.set()

    run_with(Loader(load, len, 1 << 20, workers=2), body)
    assert got == [b"kk"] * 5
    assert calls == [b"k"]


def test_a_prefetch_nobody_awaited_is_at_hand_later() -> None:
    calls: list[bytes] = []

    def load(key: bytes) -> bytes:
        calls.append(key)
        return key.upper()

    async def body(loader: Loader[bytes]) -> None:
        loader.prefetch([b"a", b"b"], max_pending=8)
        assert await loader.get(b"b") == b"B"
        assert await loader.get(b"a") == b"A"

    run_with(Loader(load, len, 1 << 20, workers=1), body)
    assert sorted(calls) == [b"a", b"b"]


def test_a_load_that_raises_gives_the_request_its_error() -> None:
    def load(key: bytes) -> bytes:
        raise ValueError(f"no {key!r}")

    async def body(loader: Loader[bytes]) -> None:
        with pytest.raises(ValueError, match="no b'x'"):
            await loader.get(b"x")

    run_with(Loader(load, len, 1 << 20, workers=1), body)


def test_a_load_that_ends_its_thread_still_answers_the_request() -> None:
    """SystemExit in a worker thread would end it silently: the request must not wait forever."""

    def load(key: bytes) -> bytes:
        raise SystemExit(3)

    async def body(loader: Loader[bytes]) -> None:
        with pytest.raises(RuntimeError, match="load ended"):
            await loader.get(b"x")

    run_with(Loader(load, len, 1 << 20, workers=1), body)


def test_a_batch_load_with_too_few_results_loads_each_key_alone() -> None:
    def load_many(keys: list[bytes]) -> list[bytes | Exception]:
        return [keys[0] + b"!"]  # one result for several keys: absurd, as from a broken backend

    async def body(loader: Loader[bytes]) -> None:
        loader.prefetch([b"a", b"b", b"c"], max_pending=8)
        assert [await loader.get(k) for k in (b"a", b"b", b"c")] == [b"A", b"B", b"C"]

    run_with(Loader(bytes.upper, len, 1 << 20, workers=1, load_many=load_many), body)
