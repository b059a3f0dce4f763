"""Per-blob compression with the algorithm recorded in the first payload byte (design.md 3)."""

from __future__ import annotations

import threading
from typing import Final

import lz4.block
import zstandard

from backupfs.errors import IntegrityError, UsageError

NONE: Final = 0
LZ4: Final = 1
ZSTD: Final = 2

_tls = threading.local()


def parse_compression(spec: str) -> tuple[int, int]:
    """'lz4', 'zstd', 'zstd:19', 'none' -> (algorithm, level)."""
    name, _, level = spec.partition(":")
    if name == "lz4" and not level:
        return LZ4, 0
    if name in ("none", "off") and not level:
        return NONE, 0
    if name == "zstd":
        try:
            lvl = int(level) if level else 3
        except ValueError:
            lvl = -100
        if not 1 <= lvl <= 22:
            raise UsageError(f"invalid zstd level in {spec!r} (1-22)")
        return ZSTD, lvl
    raise UsageError(f"unknown compression {spec!r} (lz4, zstd[:LEVEL], none)")


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per thread: sharing one between threads crashed in measurements."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_tls, "zc", None)
    if cache is None:
        cache = _tls.zc = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    dec: zstandard.ZstdDecompressor | None = getattr(_tls, "zd", None)
    if dec is None:
        dec = _tls.zd = zstandard.ZstdDecompressor()
    return dec


def compress(data: bytes | memoryview, algorithm: int, level: int = 0) -> bytes:
    """Payload = algorithm byte + body; stored raw when compression saves under 1/64."""
    if algorithm == LZ4:
        body: bytes = lz4.block.compress(data, store_size=True)
    elif algorithm == ZSTD:
        body = _zstd_compressor(level).compress(data)
    else:
        return b"\x00" + bytes(data)
    if len(body) + (len(data) >> 6) < len(data):
        return bytes((algorithm,)) + body
    return b"\x00" + bytes(data)


def decompress(payload: bytes, max_size: int = 1 << 30) -> bytes:
    if not payload:
        raise IntegrityError("empty payload")
    algorithm = payload[0]
    body = memoryview(payload)[1:]
    try:
        if algorithm == NONE:
            return bytes(body)
        if algorithm == LZ4:
            return lz4.block.decompress(body)  # type: ignore[no-any-return]
        if algorithm == ZSTD:
            return bytes(_zstd_decompressor().decompress(body, max_output_size=max_size))
    except (lz4.block.LZ4BlockError, zstandard.ZstdError, ValueError) as exc:
        raise IntegrityError(f"cannot decompress: {exc}") from exc
    raise IntegrityError(f"unknown compression algorithm {algorithm}")
