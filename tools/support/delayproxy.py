#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that adds a fixed delay to each direction and counts the bytes.

Why not `tc qdisc add dev lo root netem delay 20ms`: that delays every program on the machine's
loopback (other people's tests, the servers' own local traffic) and needs root; this proxy delays
only the connections made to it, runs anywhere, and counts what crossed it, whichever client
made the requests (restic reports no byte counts of its own).

Each chunk read from one side is sent to the other `delay` seconds after it arrived, without
holding back the chunks behind it: the link keeps its bandwidth and gains latency, as a long
cable would (a round trip costs 2 x delay). Pure asyncio in a thread of its own.

    with DelayProxy(upstream_port, delay=0.020) as proxy:   # connect to proxy.port
        ...
        proxy.counts()   # {"connections": n, "bytes_up": n, "bytes_down": n}

    python3 tools/support/delayproxy.py UPSTREAM_PORT DELAY_MS   # prints the port, runs until ^C
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from typing import Any

_CHUNK = 256 * 1024
# Bytes read ahead of what the other side has taken; a slow receiver stops the reading beyond it
# (TCP's own flow control then slows the sender, as on a real link).
_QUEUE_CHUNKS = 64


class DelayProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream_port`, `delay` seconds each way."""

    def __init__(self, upstream_port: int, delay: float = 0.0, host: str = "127.0.0.1") -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._counts = {"connections": 0, "bytes_up": 0, "bytes_down": 0}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        if not self.port:
            raise RuntimeError("delay proxy did not start")

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _add(self, key: str, n: int) -> None:
        with self._lock:
            self._counts[key] += n

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to the constructor
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
        server.close()
        # connections still open (a client that never closed): cut them, and let their pipes end
        for writer in list(self._writers):
            writer.transport.abort()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.wait(others, timeout=5)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            client_w.close()
            return
        self._add("connections", 1)
        self._writers.update((client_w, up_w))
        await asyncio.gather(
            self._pipe(client_r, up_w, "bytes_up"), self._pipe(up_r, client_w, "bytes_down"), return_exceptions=True
        )
        for w in (client_w, up_w):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, key: str) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError, RuntimeError):
                        dst.write_eof()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await src.read(_CHUNK)
                self._add(key, len(data))
                await queue.put((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            with contextlib.suppress(Exception):
                dst.close()

    def close(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: delayproxy.py UPSTREAM_PORT DELAY_MS", file=sys.stderr)
        return 2
    with DelayProxy(int(argv[0]), float(argv[1]) / 1000) as proxy:
        print(proxy.port, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
        print(proxy.counts(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
