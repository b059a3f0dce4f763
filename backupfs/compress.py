"""Per-blob compression with the algorithm recorded in the first payload byte (format.md 3)."""

from __future__ import annotations

import threading
from typing import Final

import lz4.block
import zstandard

from backupfs.errors import IntegrityError, UsageError

NONE: Final = 0
LZ4: Final = 1
ZSTD: Final = 2

ZSTD_LEVELS: Final = (1, 22)  # what zstd offers
ZSTD_DEFAULT_LEVEL: Final = 3
# A compressed body is kept only when it saves more than 1/2^MIN_SAVING_SHIFT (1/64) of the
# size: below that, decompressing on every read costs more than the bytes saved.
MIN_SAVING_SHIFT: Final = 6

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
            lvl = int(level) if level else ZSTD_DEFAULT_LEVEL
        except ValueError:
            lvl = -100
        if not ZSTD_LEVELS[0] <= lvl <= ZSTD_LEVELS[1]:
            raise UsageError(f"invalid zstd level in {spec!r} ({ZSTD_LEVELS[0]}-{ZSTD_LEVELS[1]})")
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
    if len(body) + (len(data) >> MIN_SAVING_SHIFT) < len(data):
        return bytes((algorithm,)) + body
    return b"\x00" + bytes(data)


def file_limit(stored: int) -> int:
    """The most a repository file (index, snapshot, lock, pack header, config, key metadata) may
    inflate to: FILE_FLOOR, or FILE_RATIO times what is stored. Their bulk is random ids that
    barely compress; more would be a bomb, and an honest file that big is simply stored bigger."""
    return max(FILE_FLOOR, stored * FILE_RATIO)


FILE_FLOOR: Final = 16 * 1024 * 1024
FILE_RATIO: Final = 8
_ZSTD_PIECE = 1 << 20


def decompress(payload: bytes | memoryview, max_size: int) -> bytes:
    """The plaintext of a payload, refused (IntegrityError) if it declares or inflates to more than
    `max_size` bytes, before that memory is taken: a 4 MiB lz4 blob can claim 1 GiB, a zstd frame
    any size. Callers bound by what the object can hold (a chunk, a tree, a file's size)."""
    if not payload:
        raise IntegrityError("empty payload")
    algorithm = payload[0]
    body = memoryview(payload)[1:]
    try:
        if algorithm == NONE:
            _check_size(len(body), max_size, "holds")
            return bytes(body)
        if algorithm == LZ4:
            if len(body) < 4:
                raise IntegrityError("lz4 body is truncated")
            _check_size(int.from_bytes(body[:4], "little"), max_size, "declares")
            return lz4.block.decompress(body)  # type: ignore[no-any-return]
        if algorithm == ZSTD:
            declared = zstandard.frame_content_size(body)
            if declared >= 0:
                _check_size(declared, max_size, "declares")
                return bytes(_zstd_decompressor().decompress(body))  # allocates `declared`
            return _zstd_bounded(body, max_size)
    except (lz4.block.LZ4BlockError, zstandard.ZstdError, ValueError) as exc:
        raise IntegrityError(f"cannot decompress: {exc}") from exc
    raise IntegrityError(f"unknown compression algorithm {algorithm}")


def _check_size(size: int, max_size: int, verb: str) -> None:
    if size > max_size:
        raise IntegrityError(f"compressed data {verb} {size} bytes, more than the {max_size} it may hold")


def _zstd_bounded(body: memoryview, max_size: int) -> bytes:
    """A frame without its content size: streamed, a piece at a time, never past max_size + 1
    (python-zstandard would allocate all of max_output_size up front)."""
    pieces: list[bytes] = []
    total = 0
    with _zstd_decompressor().stream_reader(body, read_across_frames=False) as reader:
        while True:
            piece = reader.read(min(_ZSTD_PIECE, max_size + 1 - total))
            if not piece:
                return b"".join(pieces)
            pieces.append(piece)
            total += len(piece)
            if total > max_size:
                raise IntegrityError(f"compressed data inflates to more than the {max_size} bytes it may hold")
