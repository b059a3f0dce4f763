"""Content-defined chunking (design.md section 6) over pyfastcdc, seeded from the master key."""

from __future__ import annotations

from collections.abc import Iterator

from pyfastcdc import FastCDC

DEFAULT_PARAMS = (512 * 1024, 512 * 1024, 8 * 1024 * 1024)  # min, FastCDC avg parameter, max
# The largest maximum chunk size a repository may set: it bounds every data blob a reader will
# inflate (design.md 5), so a config cannot lift that bound to gigabytes.
MAX_CHUNK_LIMIT = 64 * 1024 * 1024


class Chunker:
    """Cuts buffers into chunks; one FastCDC object per thread (it is not concurrency-safe)."""

    def __init__(self, params: tuple[int, int, int], seed: int) -> None:
        self.min_size, self.avg_size, self.max_size = params
        self._seed = seed

    def new_fastcdc(self) -> FastCDC:
        """A fresh FastCDC object: they are not safe to share between threads."""
        return FastCDC(avg_size=self.avg_size, min_size=self.min_size, max_size=self.max_size, seed=self._seed)

    def cut(self, buf: bytes | memoryview) -> Iterator[memoryview]:
        """Yields views into `buf`: zero copies until the chunk is compressed."""
        if len(buf) <= self.min_size:
            if len(buf):
                yield memoryview(buf)
            return
        for chunk in self.new_fastcdc().cut_buf(buf):
            yield chunk.data
