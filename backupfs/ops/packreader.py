"""Restore's reads of file content, planned for the whole restore and kept in flight ahead of it.

Asking for each file's chunks when its turn comes costs one request per chunk or small batch,
one or two at a time: over a link with 20 ms of latency that, not bandwidth, sets the speed. As
restic's restorer does, the chunks every restored file needs are known before anything is
written (the plan walks the snapshot's folders first), so they are fetched by pack: the needed
blobs of a pack lie in a few runs, each run is one ranged read (unused bytes between two needed
blobs are read through when at most READ_GAP; a run longer than RUN_PIECE in pieces of about
that size, so that its first blobs need not wait for its last), and no run is read twice. Runs are read in the
order the restore first needs them, `in_flight` at once (what the storage declares it carries
well: backends' `BackendInfo.reads_in_flight`), on threads of their own, while the restore's
writers take the blobs already there: downloads and writes overlap.

Memory is bounded: decrypted blobs wait in a store of at most `budget` bytes (plus the reads
under way). When it is full, reading ahead stops, except for a read a writer is waiting for;
and a blob that is only needed much later (a duplicate far away in the tree) is dropped first,
furthest next use first (Belady), to be read again on its own when its turn comes. A blob the
plan did not foresee (the restore skipped or kept what the plan counted, or the target changed)
or whose run failed is loaded alone through `Repository.load_blob`, which tries its other
copies and raises the error a restore reports: the plan only ever changes the speed.
"""

from __future__ import annotations

import dataclasses
import heapq
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from backupfs.errors import BackupfsError, IntegrityError
from backupfs.format.pack import DATA, read_ranges
from backupfs.repository.masterindex import BlobLocation
from backupfs.repository.repo import READ_GAP, Repository

DEFAULT_BUDGET = 128 << 20  # decrypted bytes held ahead of the writers
# A run longer than this is read in pieces of about this size, each a request of its own: the
# blobs of a piece are usable once it arrives (a whole 16 MiB pack would hold the writers back
# until its last byte), and a restore of a few large packs still keeps several reads in flight.
RUN_PIECE = 4 << 20
_STALE_FILES = 1024  # a blob whose uses all lie this many files behind the furthest one served was skipped


@dataclasses.dataclass(slots=True, eq=False)
class _Run:
    """One ranged read of one pack: its blobs, and how it went."""

    pack: bytes
    offset: int
    length: int
    blobs: list[tuple[bytes, BlobLocation]]
    first_use: int
    state: str = "planned"  # planned, reading, done


@dataclasses.dataclass(slots=True, eq=False)
class _Held:
    data: bytes
    uses: list[int]  # file positions still to be served, a heap


class PackReader:
    """Serves data blobs to a restore's writer threads from runs read ahead (see the module).

    `plan(files)` takes each restored file's chunk ids in restore order; `start()` begins reading;
    `get(blob_id)` returns a blob's plaintext (from any thread), `close()` stops the reads."""

    def __init__(self, repo: Repository, in_flight: int, budget: int = DEFAULT_BUDGET, gap: int = READ_GAP) -> None:
        self.repo = repo
        self.in_flight = max(1, in_flight)
        self.budget = budget
        self.gap = gap
        self._runs: list[_Run] = []
        self._run_of: dict[bytes, _Run] = {}  # blob id -> the run that brings it
        self._uses: dict[bytes, list[int]] = {}  # blob id -> file positions needing it
        self._held: dict[bytes, _Held] = {}
        self._held_bytes = 0
        self._reading_bytes = 0
        self._next = 0  # index in _runs of the next run to start
        self._urgent: list[_Run] = []  # runs a writer waits for, started before any other
        self._served_upto = 0  # furthest file position served
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix="bfs-restore-read")
        self._reading: set[_Run] = set()
        self._closed = False
        self.direct_loads = 0  # blobs loaded alone (not foreseen, dropped, or their run failed)

    # ---------------------------------------------------------------- plan

    def plan(self, files: Iterable[list[bytes]]) -> None:
        """The chunk ids of each restored file, in the order the restore writes them."""
        first: dict[bytes, int] = {}
        for position, blob_ids in enumerate(files):
            for blob_id in blob_ids:
                first.setdefault(blob_id, position)
                self._uses.setdefault(blob_id, []).append(position)
        by_pack: dict[bytes, list[tuple[bytes, BlobLocation]]] = {}
        for blob_id in first:
            loc = self.repo.preferred_location(blob_id)
            if loc is not None:
                by_pack.setdefault(loc.pack_id, []).append((blob_id, loc))
        for pack, blobs in by_pack.items():
            blobs.sort(key=lambda b: b[1].offset)
            for group in read_ranges(blobs, lambda b: (b[1].offset, b[1].length), self.gap):
                for part in _pieces(group):
                    start = part[0][1].offset
                    end = max(loc.offset + loc.length for _, loc in part)
                    run = _Run(pack, start, end - start, part, min(first[b] for b, _ in part))
                    self._runs.append(run)
                    for blob_id, _ in part:
                        self._run_of[blob_id] = run
        self._runs.sort(key=lambda r: r.first_use)

    @property
    def runs(self) -> int:
        return len(self._runs)

    # ---------------------------------------------------------------- reading

    def start(self) -> None:
        with self._cond:
            self._fill()

    def _fill(self) -> None:
        """Starts runs while the budget allows and threads are free; urgent ones first. Holds _cond."""
        while not self._closed:
            if len(self._reading) >= self.in_flight:
                return
            if self._urgent:
                run = self._urgent.pop(0)
                if run.state != "planned":
                    continue
            else:
                while self._next < len(self._runs) and self._runs[self._next].state != "planned":
                    self._next += 1
                if self._next >= len(self._runs):
                    return
                run = self._runs[self._next]
                if self._held_bytes + self._reading_bytes + run.length > self.budget and (
                    self._held_bytes or self._reading_bytes
                ):
                    return
            run.state = "reading"
            self._reading_bytes += run.length
            self._reading.add(run)
            self._pool.submit(self._read, run)

    def _read(self, run: _Run) -> None:
        blobs: dict[bytes, bytes] = {}
        try:
            data = memoryview(self.repo.load_pack(run.pack.hex(), run.offset, run.length))
            if len(data) == run.length:
                for blob_id, loc in run.blobs:
                    envelope = data[loc.offset - run.offset : loc.offset - run.offset + loc.length]
                    try:
                        blobs[blob_id] = self.repo.open_verified(
                            DATA, blob_id, envelope, run.pack.hex(), loc.raw_length
                        )
                    except IntegrityError:
                        pass  # loaded alone when asked for: load_blob tries the other copies
        except BackupfsError:
            pass  # likewise: the error a writer reports is the one load_blob raises
        except BaseException:
            with self._cond:
                self._finish(run, {})
            raise
        with self._cond:
            self._finish(run, blobs)

    def _finish(self, run: _Run, blobs: dict[bytes, bytes]) -> None:
        """Holds _cond: the run's blobs join the store, which is then trimmed to the budget."""
        run.state = "done"
        self._reading.discard(run)
        self._reading_bytes -= run.length
        for blob_id, data in blobs.items():
            uses = self._uses.get(blob_id)
            if uses:
                heapq.heapify(uses)
                self._held[blob_id] = _Held(data, uses)
                self._held_bytes += len(data)
        self._trim()
        self._cond.notify_all()
        self._fill()

    def _trim(self) -> None:
        """Drops blobs nobody will ask for, then (over budget) those needed furthest ahead."""
        stale = self._served_upto - _STALE_FILES
        for blob_id in [b for b, h in self._held.items() if max(h.uses) < stale]:
            self._drop(blob_id)
        if self._held_bytes <= self.budget:
            return
        for blob_id in sorted(self._held, key=lambda b: self._held[b].uses[0], reverse=True):
            if self._held_bytes <= self.budget:
                return
            self._drop(blob_id)

    def _drop(self, blob_id: bytes) -> None:
        held = self._held.pop(blob_id)
        self._held_bytes -= len(held.data)

    # ---------------------------------------------------------------- serving

    def get(self, blob_id: bytes) -> bytes:
        """A data blob's plaintext: from its run (waited for, and started at once if it was not
        yet), else loaded alone; raises what `Repository.load_blob` raises."""
        with self._cond:
            run = self._run_of.get(blob_id)
            while run is not None and not self._closed:
                held = self._held.get(blob_id)
                if held is not None:
                    position = heapq.heappop(held.uses) if held.uses else self._served_upto
                    self._served_upto = max(self._served_upto, position)
                    if not held.uses:
                        self._drop(blob_id)
                        self._fill()  # room in the budget: read further ahead
                    return held.data
                if run.state == "done":
                    break  # dropped, failed, or needed more often than planned
                if run.state == "planned" and run not in self._urgent:
                    self._urgent.append(run)
                    self._fill()
                self._cond.wait()
            self.direct_loads += 1
            uses = self._uses.get(blob_id)
            if uses:
                self._served_upto = max(self._served_upto, heapq.heappop(uses))
        return self.repo.load_blob(DATA, blob_id)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._held.clear()
            self._held_bytes = 0
            self._cond.notify_all()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pieces(group: list[tuple[bytes, BlobLocation]]) -> Iterator[list[tuple[bytes, BlobLocation]]]:
    """A run's blobs (in pack order) cut into consecutive pieces of about RUN_PIECE bytes."""
    piece: list[tuple[bytes, BlobLocation]] = []
    start = 0
    for blob in group:
        if piece and blob[1].offset + blob[1].length - start > RUN_PIECE:
            yield piece
            piece = []
        if not piece:
            start = blob[1].offset
        piece.append(blob)
    if piece:
        yield piece
