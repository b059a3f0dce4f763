"""Content-defined chunking (format.md section 6) over pyfastcdc, seeded from the master key."""

from __future__ import annotations

from collections.abc import Iterator

from pyfastcdc import FastCDC

DEFAULT_PARAMS = (512 * 1024, 512 * 1024, 8 * 1024 * 1024)  # min, FastCDC avg parameter, max
# The (lowest, highest) value of each of min, avg and max that pyfastcdc accepts (it raises
# ValueError outside them), and so all a repository config may set (format.md 5). The maximum
# also bounds every data blob a reader will inflate (format.md 3): a config cannot lift that
# bound to gigabytes.
MIN_RANGE = (64, 1 << 20)
AVG_RANGE = (256, 4 << 20)
MAX_RANGE = (1024, 16 << 20)


def params_error(params: tuple[int, int, int]) -> str | None:
    """Why the chunker cannot take these (min, avg, max), or None: checked where they are read
    or chosen, so that a bad value is refused there and not met as a crash in the middle of a backup."""
    lo, avg, hi = params
    for name, value, (low, high) in (("min", lo, MIN_RANGE), ("avg", avg, AVG_RANGE), ("max", hi, MAX_RANGE)):
        if not low <= value <= high:
            return f"chunk {name} {value} out of range ({low}-{high})"
    if not lo <= avg <= hi:
        return f"chunk sizes {lo}/{avg}/{hi} not in order (min <= avg <= max)"
    return None


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
