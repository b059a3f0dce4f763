"""S3 Object Lock for a repository (format.md 13): how long files are locked, and keeping what a
new snapshot needs locked long enough.

A repository made with `init --object-lock DAYS` promises that every file a snapshot younger than
DAYS needs (its packs, the index files listing them, the keys, the config, the snapshot file)
stays undeletable until DAYS after the snapshot, even for a holder of the storage's keys.

New files are written locked for DAYS plus a step (`write_seconds`). Before a snapshot is saved,
what it needs is extended where its lock would end before snapshot time + DAYS + SAFETY_MARGIN,
and then by the same step past that, so a file that daily backups keep using costs one extension
request per step, not one per backup (kopia instead extends every file at each full maintenance).

Knowing where a lock ends without asking the storage file by file takes a local record
(`RetentionCache`): the dates this host set or read. They are lower bounds: a retention is never
shortened (in governance mode a user allowed to bypass it could; then the record errs, and the
promise with it, which is what governance mode allows). A date not on record is read (a HEAD);
once passed, a date on record says nothing and prune reads it again before deleting.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

import blake3
import msgpack

from backupfs.backends.base import FileType, ObjectLock
from backupfs.errors import IntegrityError, NotFound
from backupfs.format.config import ObjectLockConfig
from backupfs.repository.localfile import write_atomic

DAY: Final = 86400.0
# How far past the promise a lock is set (and extended), in days: one extension request per file
# per step for files in use, against at most this much longer wait before a forgotten file can go.
EXTEND_STEP_DAYS: Final = 7
# Covers clocks that disagree (the storage judges by its own, retain-until dates are computed by
# ours) and the time from the check to the snapshot file's write.
SAFETY_MARGIN: Final = DAY
REQUESTS_IN_FLIGHT: Final = 8  # HEADs and PutObjectRetentions at once: remote storage has latency
INDEX_READERS: Final = 8
_CACHE_MAGIC: Final = b"BFSRET1"

Key = tuple[FileType, str]
T = TypeVar("T")
R = TypeVar("R")


def step_days(config: ObjectLockConfig) -> int:
    """A week, or the retention itself when it is shorter."""
    return min(EXTEND_STEP_DAYS, config.days)


def write_seconds(config: ObjectLockConfig) -> float:
    """How long a new file is locked from its write."""
    return (config.days + step_days(config)) * DAY


@dataclasses.dataclass(slots=True)
class IndexEntry:
    """What the retention keeper needs of an index file: what it supersedes, which packs it lists."""

    supersedes: frozenset[str]
    packs: bytes  # pack ids, 32 bytes each


class RetentionCache:
    """This host's record of retain-until dates (lower bounds) and of the index files' contents.

    Kept in `<cache dir>/<repository id>/retention.cache`, authenticated like the index cache
    (a key derived from the repository's id key): a damaged or foreign file is ignored and the
    dates are read from the storage again. Without a cache folder it lives for one command.
    """

    def __init__(self, root: str | None, repo_id: bytes, id_key: bytes) -> None:
        self.path = os.path.join(root, repo_id.hex(), "retention.cache") if root else None
        self._mac_key = blake3.blake3(b"bfs1 retention cache", key=id_key).digest()
        self.until: dict[Key, float] = {}
        self.index: dict[str, IndexEntry] = {}
        self._load()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return
        body, mac = data[:-32], data[-32:]
        if len(data) < 32 or blake3.blake3(body, key=self._mac_key).digest() != mac:
            return
        try:
            magic, until, index = msgpack.unpackb(body, raw=False, strict_map_key=False)
            if magic != _CACHE_MAGIC:
                return
            self.until = {(FileType(t), str(n)): float(u) for t, n, u in until}
            self.index = {str(n): IndexEntry(frozenset(map(str, s)), bytes(p)) for n, s, p in index}
        except (ValueError, TypeError, msgpack.UnpackException):
            self.until, self.index = {}, {}

    def store(self, now: float) -> None:
        """Atomic replace; failing to write a cache is never an error for the command. Dates
        already passed are dropped: they no longer bound anything (deleted files go with them)."""
        if self.path is None:
            return
        self.until = {k: u for k, u in self.until.items() if u > now}
        body = msgpack.packb(
            [
                _CACHE_MAGIC,
                [[t.value, n, int(u)] for (t, n), u in self.until.items()],
                [[n, sorted(e.supersedes), e.packs] for n, e in self.index.items()],
            ],
            use_bin_type=True,
        )
        data = body + blake3.blake3(body, key=self._mac_key).digest()
        write_atomic(self.path, data)

    def forget(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.until.pop(key, None)


@dataclasses.dataclass(slots=True)
class ProtectStats:
    """What keeping one snapshot's files locked cost: for `backup --json` and the measurements."""

    files: int = 0  # files the snapshot needs
    index_files_read: int = 0  # index files read to learn which packs they list
    checked: int = 0  # retain-until dates read from the storage (HEAD)
    extended: int = 0  # PutObjectRetention requests
    until: float = 0.0  # the date the extended files were given

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


class RetentionKeeper:
    """Keeps the files a snapshot needs locked until its time + DAYS (format.md 13)."""

    def __init__(
        self,
        backend: ObjectLock,
        config: ObjectLockConfig,
        cache: RetentionCache,
        clock: Callable[[], float],
    ) -> None:
        self.backend = backend
        self.config = config
        self.cache = cache
        self.clock = clock

    def required_until(self, snapshot_time: float) -> float:
        """A file a snapshot taken at `snapshot_time` needs must stay locked at least until then."""
        return snapshot_time + self.config.days * DAY + SAFETY_MARGIN

    def protect(self, needed: Sequence[Key], snapshot_time: float) -> ProtectStats:
        """Extends every file of `needed` whose lock ends before `required_until(snapshot_time)`
        to now + DAYS + a step; dates not on record are read first (most need nothing then)."""
        stats = ProtectStats(files=len(needed))
        required = self.required_until(snapshot_time)
        now = self.clock()
        target = max(now + write_seconds(self.config), required)
        unknown = [k for k in needed if k not in self.cache.until]
        for key, until in _parallel(self._read, unknown, REQUESTS_IN_FLIGHT):
            stats.checked += 1
            self.cache.until[key] = until
        short = [k for k in needed if self.cache.until[k] < required]
        for key, _ in _parallel(lambda k: self.backend.extend_retention(k[0], k[1], target), short, REQUESTS_IN_FLIGHT):
            self.cache.until[key] = target
            stats.extended += 1
        if short:
            stats.until = target
        self.cache.store(now)
        return stats

    def _read(self, key: Key) -> float:
        until = self.backend.retention(*key)
        return 0.0 if until is None else until

    def locked(self, keys: Sequence[Key]) -> dict[Key, float]:
        """Of `keys`, those still locked now, with their dates: a date on record that lies ahead is
        enough; any other is read. Files already gone are left out."""
        now = self.clock()
        out = {k: u for k in keys if (u := self.cache.until.get(k, 0.0)) > now}
        ask = [k for k in keys if k not in out]

        def read(key: Key) -> float | None:
            try:
                return self._read(key)
            except NotFound:
                return None

        for key, until in _parallel(read, ask, REQUESTS_IN_FLIGHT):
            if until is None:
                self.cache.until.pop(key, None)
                continue
            self.cache.until[key] = until
            if until > now:
                out[key] = until
        if ask:
            self.cache.store(now)
        return out

    def index_catalog(self, names: Sequence[str], load: Callable[[str], tuple[list[bytes], list[bytes]]]) -> int:
        """Brings the record of index files up to date with `names` (those now listed), reading
        the files it has not seen with `load` (-> supersedes, pack ids); returns how many were
        read. A file that cannot be read is left out: readers skip it too."""
        listed = set(names)
        for gone in [n for n in self.cache.index if n not in listed]:
            del self.cache.index[gone]
        new = [n for n in names if n not in self.cache.index]

        def read(name: str) -> IndexEntry | None:
            try:
                supersedes, packs = load(name)
            except (IntegrityError, NotFound):
                return None
            return IndexEntry(frozenset(s.hex() for s in supersedes), b"".join(packs))

        read_count = 0
        for name, entry in _parallel(read, new, INDEX_READERS):
            read_count += 1
            if entry is not None:
                self.cache.index[name] = entry
        return read_count

    def index_files_for(self, packs: set[bytes]) -> list[str]:
        """The live index files (superseded by none) that list any of `packs`."""
        superseded = {s for e in self.cache.index.values() for s in e.supersedes}
        out = []
        for name, entry in self.cache.index.items():
            if name in superseded:
                continue
            ids = entry.packs
            if any(ids[i : i + 32] in packs for i in range(0, len(ids), 32)):
                out.append(name)
        return sorted(out)


def _parallel(fn: Callable[[T], R], items: Sequence[T], width: int) -> list[tuple[T, R]]:
    """`fn` over `items`, `width` at a time; the first error is raised once all have finished."""
    if not items:
        return []
    if len(items) == 1:
        return [(items[0], fn(items[0]))]
    with ThreadPoolExecutor(width, thread_name_prefix="bfs-retention") as pool:
        futures = [(x, pool.submit(fn, x)) for x in items]
    for _x, fut in futures:
        exc = fut.exception()
        if exc is not None:
            raise exc
    return [(x, fut.result()) for x, fut in futures]
