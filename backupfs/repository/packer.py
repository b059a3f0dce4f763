"""Packs blobs into packfiles and uploads them in the background (format.md 7, 12).

Blob encryption happens in the caller's thread (the work that needs both cores); appending to the
open pack is a short critical section; uploads run on their own threads with a bound on packs in
flight, so storage latency overlaps with CPU work and memory stays at a few packs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from backupfs.compress import LZ4, compress
from backupfs.crypto import Cipher, file_id
from backupfs.format.pack import HEADER_AAD, TRAILER, PackEntry, encode_header


class _OpenPack:
    __slots__ = ("buf", "entries")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.entries: list[PackEntry] = []


class Packer:
    """One open pack per blob type; full packs go to `upload(name, data, entries)`."""

    def __init__(
        self,
        cipher: Cipher,
        target_size: int,
        upload: Callable[[str, bytes, list[PackEntry]], None],
        uploaders: int = 2,
        max_in_flight: int = 4,
    ) -> None:
        self._cipher = cipher
        self._target = target_size
        self._upload = upload
        self._open: dict[int, _OpenPack] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(uploaders, thread_name_prefix="bfs-upload")
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._futures: set[Future[None]] = set()
        self._error: BaseException | None = None

    def add(self, btype: int, blob_id: bytes, envelope: bytes, raw_length: int) -> None:
        self.raise_error()
        full: _OpenPack | None = None
        with self._lock:
            pack = self._open.get(btype)
            if pack is None:
                pack = self._open[btype] = _OpenPack()
            pack.entries.append(PackEntry(btype, blob_id, len(pack.buf), len(envelope), raw_length))
            pack.buf += envelope
            if len(pack.buf) >= self._target:
                full = self._open.pop(btype)
        if full is not None:
            self._submit(full)

    def _submit(self, pack: _OpenPack) -> None:
        header = self._cipher.seal(compress(encode_header(pack.entries), LZ4), HEADER_AAD)
        pack.buf += header
        pack.buf += TRAILER.pack(len(header))
        data = bytes(pack.buf)
        name = file_id(data)
        self._slots.acquire()
        fut = self._pool.submit(self._run_upload, name, data, pack.entries)
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(self._done)

    def _run_upload(self, name: str, data: bytes, entries: list[PackEntry]) -> None:
        try:
            if self._error is not None:
                # One upload already failed for good (retries exhausted): the backup will fail;
                # don't make every queued pack go through its own retry cycle first.
                raise self._error
            self._upload(name, data, entries)
        except BaseException as exc:
            self._error = self._error or exc
            raise
        finally:
            self._slots.release()

    def _done(self, fut: Future[None]) -> None:
        with self._lock:
            self._futures.discard(fut)

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Closes every open pack and waits until all uploads finished (or one failed)."""
        with self._lock:
            packs = list(self._open.values())
            self._open.clear()
        for pack in packs:
            if pack.entries:
                self._submit(pack)
        while True:
            with self._lock:
                futures = list(self._futures)
            if not futures:
                break
            wait(futures)
        self.raise_error()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
