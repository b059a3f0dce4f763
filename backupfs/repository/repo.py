"""Opening, reading and writing a repository: the one place that knows the write ordering."""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from backupfs.backends.base import Backend, BackendInfo, FileType, ObjectLock
from backupfs.chunker import DEFAULT_PARAMS, Chunker, params_error
from backupfs.compress import LZ4, NONE, ZSTD, compress, decompress, file_limit, parse_compression
from backupfs.crypto import (
    ARGON2_MEM,
    ARGON2_OPS,
    Cipher,
    IdHasher,
    MasterKey,
    default_suite,
    file_id,
    kdf_cost,
    unwrap_master_key,
    wrap_master_key,
)
from backupfs.errors import (
    BackendError,
    BackupfsError,
    BlobNotIndexed,
    IntegrityError,
    NotFound,
    PackMissing,
    RepositoryNotFound,
    UsageError,
    WrongPassword,
)
from backupfs.format import index as index_fmt
from backupfs.format import lock as lock_fmt
from backupfs.format import snapshot as snapshot_fmt
from backupfs.format import verifyrecord as verify_fmt
from backupfs.format.config import (
    LOCKED_VERSION,
    PACK_SIZE_RANGE,
    VERSION,
    ConfigBody,
    ConfigHeader,
    ObjectLockConfig,
    config_aad,
)
from backupfs.format.index import IndexFile
from backupfs.format.keyexport import KeyExport
from backupfs.format.keyfile import META_AAD, KeyFile, decode_meta, encode_meta, key_aad
from backupfs.format.lock import LockInfo
from backupfs.format.pack import (
    DATA,
    HEADER_AAD,
    TRAILER,
    TREE,
    PackEntry,
    blob_aad,
    decode_header,
    header_location,
    read_ranges,
)
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, Listing, Node, decode_tree, encode_tree, read_listing
from backupfs.format.verifyrecord import VerifyRecord
from backupfs.repository import locks, retention
from backupfs.repository.cache import IndexCache, prepare_cache
from backupfs.repository.filecache import FileCache
from backupfs.repository.headers import DamagedBlobs, HeaderCache
from backupfs.repository.masterindex import BlobLocation, MasterIndex
from backupfs.repository.packer import Packer

DEFAULT_PACK_SIZE = 16 * 1024 * 1024
INDEX_EVERY_PACKS = 10
# The local index cache is rewritten when more index files than this were read beside it: fewer
# are cheap to read and overlay each time, and rewriting the cache costs a full compaction.
INDEX_CACHE_REFRESH_FILES = 16
TREE_ZSTD_LEVEL = 3  # tree blobs, whatever the data's compression (format.md 3)
MAX_TREE_BLOB = 256 << 20  # one folder's listing (format.md 9): ~1 million entries; more is a bomb
MAX_KEY_FILE = 64 << 10  # a key file is ~300 bytes; a bigger one is not read
# Kept in the local cache of a remote repository: read whole by every `snapshots` and drill,
# never changed once written.
_CACHED_TYPES = (FileType.SNAPSHOT, FileType.VERIFY)
READ_GAP = 256 << 10  # unused bytes a batched read goes through rather than making another request
SHORT_ID_CANDIDATE = 12  # digits shown of each snapshot an ambiguous prefix matches
MAX_CANDIDATES = 10  # of those, at most this many are named
# Bytes read from a pack's end to find its header without knowing the header's length: one
# request holds the header of a pack of up to ~1,000 blobs; a larger header takes a second one.
HEADER_PROBE = 64 << 10
HEADER_READERS = 8  # pack headers read at once (remote backends have latency)
TREE_WALKERS = 4  # threads fetching trees when the packs a snapshot needs are collected
TREE_CACHE_TREES = 256  # decoded listings `load_tree` keeps: a walk revisits few, the mount has its own


@dataclasses.dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    host: str
    user: str
    created_ns: int
    current: bool


class Repository:
    """An unlocked repository. Thread-safe: pipelines call load_blob/save_blob from many threads."""

    def __init__(
        self,
        backend: Backend,
        master: MasterKey,
        header: ConfigHeader,
        body: ConfigBody,
        key_name: str,
        cache_dir: str | None = None,
        cache_files: bool = False,
        warn: Callable[[str], None] = lambda _m: None,
    ):
        self.backend = backend
        # one line per problem a command should hear of but can work around (a damaged index
        # or snapshot file skipped): the CLI prints it as a warning
        self.warn = warn
        self.cache_dir = cache_dir
        self.files = FileCache(cache_dir, header.repo_id) if cache_dir and cache_files else None
        self.master = master
        self.header = header
        self.config = body
        self.key_name = key_name
        self.cipher = Cipher(header.aead, master.enc)
        self.blob_id = IdHasher(master.id)
        self.index = MasterIndex()
        self.compression, self.compression_level = parse_compression(body.compression)
        self._pending: set[bytes] = set()
        self._pending_lock = threading.Lock()
        self._unindexed: dict[bytes, list[PackEntry]] = {}
        self._index_lock = threading.Lock()
        self._packer: Packer | None = None
        self._tree_cache: OrderedDict[bytes, Listing] = OrderedDict()
        self._tree_cache_lock = threading.Lock()
        self._locks: list[locks.Lock] = []
        self.stats_added_bytes = 0
        # Damage worked around (architecture.md 4): index files skipped as damaged (name -> reason),
        # packs whose blobs came from their own headers because no readable index file lists
        # them, packs in which a blob failed (their copies are tried last), and the blobs a
        # local `check --read-data` found damaged (blob id -> packs holding a damaged copy).
        self.damaged_index_files: dict[str, str] = {}
        self.header_only_packs: set[bytes] = set()
        self._suspect_packs: set[bytes] = set()
        self._damaged: dict[bytes, set[bytes]] = {}
        self._headers = HeaderCache(cache_dir, header.repo_id)
        self._scan_lock = threading.Lock()
        self._scanned = False  # the packs no index lists were looked for since the index loaded
        self._warned: set[str] = set()
        # Object Lock asked for by the config but not offered by this storage (a copy of the
        # repository in a directory): said once, at the first snapshot written
        self.lock_unavailable: str | None = None
        self.retention_on = False  # every save is locked (format.md 13)
        self.clock: Callable[[], float] = time.time  # for the retention dates; tests move it
        self._keeper: retention.RetentionKeeper | None = None
        self._keeper_lock = threading.Lock()  # pack upload threads record their dates through it
        self.retention_stats: retention.ProtectStats | None = None  # of the last snapshot saved

    # ---------------------------------------------------------------- open / init

    @classmethod
    def init(
        cls,
        backend: Backend,
        password: bytes,
        *,
        suite: str | None = None,
        chunker: tuple[int, int, int] = DEFAULT_PARAMS,
        pack_size: int = DEFAULT_PACK_SIZE,
        compression: str = "lz4",
        master: MasterKey | None = None,
        kdf: tuple[int, int] = (ARGON2_OPS, ARGON2_MEM),
        object_lock: ObjectLockConfig | None = None,
    ) -> Repository:
        """`object_lock`: every file but the lock files is written under S3 Object Lock retention
        (format.md "Object Lock"); the storage must have it (a bucket created with it), else
        UsageError before anything is written. A missing bucket is created with it."""
        parse_compression(compression)
        if not PACK_SIZE_RANGE[0] <= pack_size <= PACK_SIZE_RANGE[1]:
            raise UsageError("pack size must be between 1 MiB and 1 GiB")
        problem = params_error(chunker)
        if problem:
            raise UsageError(problem)
        if backend.exists():
            raise BackupfsError(f"a repository already exists at {backend.location}")
        master = master or MasterKey.generate()
        header_suite = suite or default_suite()
        repo_id = os.urandom(32)
        body = ConfigBody(chunker, pack_size, compression, object_lock)
        cipher = Cipher(header_suite, master.enc)
        sealed = cipher.seal(compress(body.encode(), NONE), config_aad(repo_id))
        header = ConfigHeader(repo_id, header_suite, sealed, LOCKED_VERSION if object_lock else VERSION)
        if object_lock is not None:
            _start_retention(backend, object_lock)  # before create(): a new bucket gets Object Lock
        backend.create()
        if object_lock is not None:
            _require_object_lock(backend)
        repo = cls(backend, master, header, body, "")
        repo.retention_on = object_lock is not None
        repo.key_name = repo._write_key(password, kdf)
        backend.save(FileType.CONFIG, "config", header.encode())
        return repo

    @classmethod
    def open(
        cls,
        backend: Backend,
        password: bytes,
        cache_dir: str | None = None,
        cache_files: bool = False,
        *,
        key_hint: str | None = None,
        warn: Callable[[str], None] = lambda _m: None,
    ) -> Repository:
        """`cache_files` keeps snapshots and tree packs locally: worth it for remote backends only.

        Key files are tried cheapest first (the hinted ones before all), so a costly key file
        someone added delays only the password it belongs to; key files whose KDF parameters are
        out of the accepted range are skipped with a warning (format.md 4)."""
        header = _load_config(backend)
        aad = key_aad(header.repo_id)
        keys = list(backend.list(FileType.KEY))
        if not keys:
            raise IntegrityError("repository has no key files")
        candidates, damaged = _usable_keys(backend, keys, key_hint, warn)
        for name, kf in candidates:
            try:
                master = unwrap_master_key(kf.wrapped, password, aad)
            except WrongPassword:
                continue
            except IntegrityError as exc:
                damaged.append(f"keys/{name}: {exc}")
                continue
            if cache_dir is not None:
                prepare_cache(cache_dir, header.repo_id)
            body = _config_body(header, master)
            repo = cls(backend, master, header, body, name, cache_dir, cache_files, warn)
            if body.object_lock is not None:
                try:
                    _start_retention(backend, body.object_lock)
                    repo.retention_on = True
                except UsageError as exc:  # read-only use of a copy stays possible
                    repo.lock_unavailable = str(exc)
            return repo
        if len(damaged) == len(keys):
            # No key could even be tried: "wrong password" would send the user the wrong way.
            raise IntegrityError(f"no usable key file: {'; '.join(damaged)}")
        note = f" ({len(damaged)} damaged key files skipped: {damaged[0]})" if damaged else ""
        raise WrongPassword(f"wrong password or no key found{note}")

    @classmethod
    def import_key(cls, backend: Backend, export: KeyExport, password: bytes, new_password: bytes) -> str:
        """Writes a key file for `new_password` from a key export, whose own `password` unwraps it:
        the way back in when every key file is lost or damaged. Returns the new key file's name."""
        header = _load_config(backend)
        if export.repo_id != header.repo_id:
            raise UsageError(
                f"the key export is of repository {export.repo_id.hex()[:10]}, not of this one ({header.repo_id.hex()[:10]})"
            )
        master = unwrap_master_key(export.wrapped, password, key_aad(header.repo_id))
        body = _config_body(header, master)  # the key opens this repository's config: it is the key
        return cls(backend, master, header, body, "")._write_key(new_password)

    def export_key(self) -> KeyExport:
        """The master key as the key file in use wraps it: its password protects the export."""
        kf = KeyFile.decode(_load_verified(self.backend, FileType.KEY, self.key_name))
        return KeyExport(self.header.repo_id, kf.wrapped)

    # ---------------------------------------------------------------- whole files

    def _seal(self, plaintext: bytes, aad: bytes, algorithm: int = LZ4) -> bytes:
        return self.cipher.seal(compress(plaintext, algorithm), aad)

    def _open(self, envelope: bytes, aad: bytes) -> bytes:
        return decompress(self.cipher.open(envelope, aad), file_limit(len(envelope)))

    def save_file(self, ftype: FileType, plaintext: bytes, aad: bytes) -> str:
        if ftype in (FileType.INDEX, FileType.SNAPSHOT):
            # these make packs count (format.md 12): not if a prune may have deleted them meanwhile
            self.check_lock()
        data = self._seal(plaintext, aad)
        name = file_id(data)
        self._save_locked(ftype, name, data)
        return name

    def _save_locked(self, ftype: FileType, name: str, data: bytes | memoryview) -> None:
        """backend.save, noting on a locked repository the least retain-until date it gets."""
        if not self.retention_on or ftype is FileType.LOCK:
            self.backend.save(ftype, name, data)
            return
        assert self.config.object_lock is not None
        until = self.clock() + retention.write_seconds(self.config.object_lock)
        self.backend.save(ftype, name, data)
        self.keeper().cache.until[(ftype, name)] = until

    def load_file(self, ftype: FileType, name: str, aad: bytes) -> bytes:
        cached = self.files.get(ftype, name) if self.files is not None and ftype in _CACHED_TYPES else None
        if cached is not None:
            data = cached
        else:
            data = _load_verified(self.backend, ftype, name)
            if self.files is not None and ftype in _CACHED_TYPES:
                self.files.put(ftype, name, data)
        try:
            return self._open(data, aad)
        except IntegrityError as exc:
            raise IntegrityError(f"{ftype.value}/{name}: {exc}") from exc

    # ---------------------------------------------------------------- storage, for services
    # Services (check, repair, prune, tag, the mount) reach the storage only through these: what
    # they list, read raw, write and delete is visible here, in the one place that orders writes.

    def storage_info(self) -> BackendInfo:
        """What the storage declares it is (local, append-only, sweeps its temporaries)."""
        return self.backend.info()

    def file_names(self, ftype: FileType) -> list[str]:
        """The repository files of one type the storage lists now, in its order."""
        return [name for name, _size in self.backend.list(ftype)]

    def pack_files(self) -> dict[str, int]:
        """Every pack file the storage lists now: name -> size."""
        return dict(self.backend.list(FileType.DATA))

    def foreign_files(self) -> list[str]:
        """Files in the repository's folders that are not repository files (format.md 2)."""
        return list(self.backend.list_foreign())

    def load_pack(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """A pack's bytes as stored, unchecked: for callers that authenticate each blob they use.
        A missing pack is NotFound, a storage failure BackendError, as the backend says."""
        return self.backend.load(FileType.DATA, name, offset, length)

    def save_pack(self, name: str, data: bytes) -> None:
        """A whole pack made by a caller's own packer (repack, salvage), named by its hash."""
        self._save_locked(FileType.DATA, name, data)

    def remove_file(self, ftype: FileType, name: str) -> None:
        """Deletes one repository file (NotFound if it is gone, UnderRetention if locked)."""
        self.backend.remove(ftype, name)

    def remove_stale_temporaries(self) -> int:
        """Temporary files of writers that died mid-save, where the storage can find them."""
        return self.backend.remove_stale_temporaries() if self.backend.info().sweeps_temporaries else 0

    # ---------------------------------------------------------------- keys

    def _write_key(self, password: bytes, kdf: tuple[int, int] = (ARGON2_OPS, ARGON2_MEM)) -> str:
        wrapped = wrap_master_key(self.master, password, key_aad(self.header.repo_id), *kdf)
        meta = self._seal(encode_meta(socket.gethostname(), getpass.getuser(), time.time_ns()), META_AAD, NONE)
        data = KeyFile(wrapped, meta).encode()
        name = file_id(data)
        self._save_locked(FileType.KEY, name, data)
        return name

    def add_key(self, password: bytes) -> str:
        return self._write_key(password)

    def list_keys(self) -> list[KeyInfo]:
        out = []
        for name, _size in self.backend.list(FileType.KEY):
            try:
                kf = KeyFile.decode(_load_verified(self.backend, FileType.KEY, name))
                host, user, created = decode_meta(self._open(kf.meta, META_AAD))
            except IntegrityError:
                # listed, so that `key remove` can clear it: one bad key must not hide the others
                host, user, created = "?", "(damaged)", 0
            out.append(KeyInfo(name, host, user, created, name == self.key_name))
        return sorted(out, key=lambda k: (k.created_ns, k.name))

    def remove_key(self, name: str) -> None:
        """`name` may be a prefix: it is resolved before the check, or a short id would slip past it
        and remove the key in use (the last one, with one key: the repository would be lost)."""
        matches = [n for n, _ in self.backend.list(FileType.KEY) if name and n.startswith(name)]
        if len(matches) != 1:
            raise UsageError(f"key {name!r} {'is ambiguous' if matches else 'not found'}")
        if matches[0] == self.key_name:
            raise UsageError("refusing to remove the key currently in use (use `key passwd` to change it)")
        self.backend.remove(FileType.KEY, matches[0])

    def change_password(self, password: bytes) -> str:
        """New key file first, old one removed after: a crash never leaves no key.

        Under Object Lock the old key file may still be locked: then UnderRetention is raised
        after the new key is saved (`key_name`), and the old password works until that date."""
        old = self.key_name
        self.key_name = self._write_key(password)
        self.backend.remove(FileType.KEY, old)
        return self.key_name

    # ---------------------------------------------------------------- locks

    def lock(self, exclusive: bool = False, retry_for: float = 0.0, clock: locks.Clock | None = None) -> locks.Lock:
        lk = locks.acquire(
            self.backend,
            lambda data: self._seal(data, lock_fmt.AAD),
            self.read_lock,
            exclusive,
            retry_for,
            clock or locks.SYSTEM_CLOCK,
        )
        self._locks.append(lk)
        return lk

    def check_lock(self) -> None:
        """Raises LockLost if a lock this process holds may have been judged stale elsewhere.

        Called before every index and snapshot file is written (save_file), and by prune before
        each phase that deletes: past that point another process may have acted on the belief
        that we are gone. Without a lock (`--no-lock`) there is nothing to check.
        """
        for lk in self._locks:
            lk.check()

    def read_lock(self, name: str) -> LockInfo:
        return _decode_named(LockInfo.decode, self.load_file(FileType.LOCK, name, lock_fmt.AAD), f"locks/{name}")

    def unlock_stale(self, remove_all: bool = False) -> int:
        return locks.remove_stale(self.backend, self.read_lock, remove_all)

    # ---------------------------------------------------------------- index

    def load_index(self) -> set[str]:
        """Loads the master index: from the local cache where it is current, else from the
        repository's index files (in parallel: remote backends have latency). Returns the
        names of the index files it covers.

        The new index is built and compacted completely, then published in one assignment: a
        mount's worker threads read `self.index` without a lock while this reloads it, and must
        see either the old index or the new one, never one half made.

        An index file that cannot be read is skipped with one warning naming it (format.md 8,
        "Damaged files"): one bad file must not stop every restore. The packs it listed are then
        found from their own headers (`scan_unlisted_packs`); prune still refuses to run until
        `repair index` has replaced it.
        """
        names = [name for name, _ in self.backend.list(FileType.INDEX)]
        cache = IndexCache(self.cache_dir, self.header.repo_id, self.master.id) if self.cache_dir else None
        cached = cache.load() if cache is not None else None
        covered: set[str] = set()
        base = None
        if cached is not None and cached[0] <= set(names):
            covered, base = cached
        files, damaged = self.load_index_files([n for n in names if n not in covered])
        superseded = {s for f in files.values() for s in f.supersedes}
        if base is not None and any(bytes.fromhex(n) in superseded for n in covered):
            # a prune replaced index files the cache was built from: start over
            covered, base = set(), None
            files, damaged = self.load_index_files(names)
            superseded = {s for f in files.values() for s in f.supersedes}
        live = [
            (pack_id, entries)
            for name, f in files.items()
            if bytes.fromhex(name) not in superseded
            for pack_id, entries in f.packs.items()
        ]
        index = MasterIndex.build(live) if base is None else MasterIndex.from_table(base, live)
        if cache is not None and (base is None or len(files) > INDEX_CACHE_REFRESH_FILES):
            cache.store(sorted(covered | set(files)), index.to_table())  # compacts it first
        damaged = {n: why for n, why in damaged.items() if bytes.fromhex(n) not in superseded}
        with self._scan_lock:
            self.index = index
            self.header_only_packs = set()
            self._scanned = False
        self.damaged_index_files = damaged
        for name, why in damaged.items():
            self._warn_once(
                f"index/{name}",
                f"index file {name[:8]} is damaged and was skipped ({why}); the packs it listed are read "
                "from their own headers. Run `backupfs repair index` to replace it",
            )
        if damaged:
            self.scan_unlisted_packs()
        known = index.pack_ids()
        self._damaged = {
            b: packs & known for b, packs in DamagedBlobs(self.cache_dir, self.header.repo_id).load().items()
        }
        self._damaged = {b: packs for b, packs in self._damaged.items() if packs}
        if self.files is not None:
            self.files.forget_except(FileType.DATA, {p.hex() for p in index.pack_ids() | self.header_only_packs})
        return set(names)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.warn(message)

    def load_index_file(self, name: str) -> IndexFile:
        return _decode_named(IndexFile.decode, self.load_file(FileType.INDEX, name, index_fmt.AAD), f"index/{name}")

    def load_index_files(self, names: list[str]) -> tuple[dict[str, IndexFile], dict[str, str]]:
        """(the files that could be read, name -> why for those that could not). A file gone
        meanwhile (a prune replaced it) is neither."""

        def load(name: str) -> tuple[str, IndexFile | str | None]:
            try:
                return name, self.load_index_file(name)
            except NotFound:
                return name, None
            except IntegrityError as exc:
                return name, str(exc).removeprefix(f"index/{name}: ")

        if len(names) <= 1:
            results = [load(n) for n in names]
        else:
            with ThreadPoolExecutor(8, thread_name_prefix="bfs-index") as pool:
                results = list(pool.map(load, names))
        files = {n: f for n, f in results if isinstance(f, IndexFile)}
        damaged = {n: f for n, f in results if isinstance(f, str)}
        return files, damaged

    def index_files(self) -> dict[str, IndexFile]:
        """Every index file; raises IntegrityError naming the first one that cannot be read."""
        names = [name for name, _ in self.backend.list(FileType.INDEX)]
        files, damaged = self.load_index_files(names)
        for name, why in damaged.items():
            raise IntegrityError(f"index/{name}: {why}")
        return files

    # ---------------------------------------------------------------- packs no index lists

    def pack_header(self, name: str, size: int) -> list[PackEntry]:
        """A pack's blob list from its own authenticated header: one ranged read of its end (two
        for a header past HEADER_PROBE), kept locally (a pack never changes). IntegrityError if
        the pack is gone or its header is damaged; BackendError if the storage fails."""
        cached = self._headers.get(name)
        if cached is not None and cached[0] == size:
            try:
                return self._decode_pack_header(cached[1], size - TRAILER.size - len(cached[1]))
            except IntegrityError:
                self._headers.remove(name)
        probe = min(size, HEADER_PROBE)
        try:
            tail = self.backend.load(FileType.DATA, name, size - probe, probe)
        except NotFound as exc:
            raise PackMissing(f"pack {name} is missing", name) from exc
        try:
            hoff, hlen = header_location(size, tail[-TRAILER.size :])
        except IntegrityError as exc:
            raise IntegrityError(f"pack {name}: {exc}") from exc
        start = size - probe
        envelope = tail[hoff - start : hoff - start + hlen] if hoff >= start else self._load_range(name, hoff, hlen)
        entries = self._decode_pack_header(envelope, hoff, name)
        self._headers.put(name, size, envelope)
        return entries

    def _decode_pack_header(self, envelope: bytes, hoff: int, name: str = "?") -> list[PackEntry]:
        try:
            entries = decode_header(self._open(envelope, HEADER_AAD))
        except IntegrityError as exc:
            raise IntegrityError(f"pack {name}: header: {exc}") from exc
        if any(e.offset + e.length > hoff for e in entries):
            raise IntegrityError(f"pack {name}: header points beyond the blobs")
        return entries

    def unlisted_packs(self) -> list[tuple[str, int]]:
        """(name, size) of the pack files that the master index does not know."""
        known = self.index.pack_ids()
        return [(n, size) for n, size in self.backend.list(FileType.DATA) if bytes.fromhex(n) not in known]

    def read_headers(self, packs: list[tuple[str, int]]) -> list[tuple[str, int, list[PackEntry] | IntegrityError]]:
        """The headers of many packs, several at a time; a pack whose header cannot be read
        gets its error instead (a storage failure that is not damage still raises)."""

        def one(item: tuple[str, int]) -> tuple[str, int, list[PackEntry] | IntegrityError]:
            name, size = item
            try:
                return name, size, self.pack_header(name, size)
            except IntegrityError as exc:
                return name, size, exc

        if len(packs) <= 1:
            return [one(p) for p in packs]
        with ThreadPoolExecutor(HEADER_READERS, thread_name_prefix="bfs-header") as pool:
            return list(pool.map(one, packs))

    def scan_unlisted_packs(self) -> int:
        """Adds to the master index the blobs of every pack that no readable index file lists,
        from the packs' own headers; once per loaded index. Returns how many packs were added.

        Such packs hold what a damaged index file listed, or what a forged index that
        supersedes the real ones hides (an append-only client holding the password can write
        one): their blobs are authentic, so readers may use them. The cost is one listing of
        `data/` and one ranged read per such pack, its result kept locally."""
        with self._scan_lock:
            if self._scanned:
                return 0
            index = self.index
            found = self.read_headers(self.unlisted_packs())
            added = 0
            for name, _size, entries in found:
                if isinstance(entries, IntegrityError) or not entries:
                    continue
                pack_id = bytes.fromhex(name)
                index.add_pack(pack_id, entries)
                self.header_only_packs.add(pack_id)
                added += 1
            self._scanned = True
        if added:
            self._warn_once(
                "unlisted-packs",
                f"{added} packs that no readable index file lists were read from their own headers "
                "(run `backupfs check`; `backupfs repair index` lists them again)",
            )
        return added

    def save_index(self, packs: dict[bytes, list[PackEntry]], supersedes: Iterable[bytes] = ()) -> str:
        return self.save_file(FileType.INDEX, IndexFile(dict(packs), list(supersedes)).encode(), index_fmt.AAD)

    def save_index_files(
        self,
        packs: Iterable[tuple[bytes, list[PackEntry]]],
        supersedes: list[bytes],
        max_entries: int,
        hook: Callable[[str], None] = lambda _p: None,
        phase: str = "index",
    ) -> list[str]:
        """Index files of at most `max_entries` entries (a pack is never split), of which only
        the last supersedes `supersedes`: until it exists the old files stay in force, and the
        earlier new files only repeat packs that exist (architecture.md 5). `packs` may be a
        generator, read once. Files written before a failure are removed again."""
        written: list[str] = []
        chunk: dict[bytes, list[PackEntry]] = {}
        entries = 0
        try:
            for pid, es in packs:
                if chunk and entries + len(es) > max_entries:
                    written.append(self.save_index(chunk))
                    if len(written) == 1:
                        hook(f"{phase}:index-partial")
                    chunk, entries = {}, 0
                chunk[pid] = es
                entries += len(es)
            written.append(self.save_index(chunk, supersedes))
        except BackupfsError:
            for name in written:
                try:
                    self.backend.remove(FileType.INDEX, name)
                except BackendError:
                    pass
            raise
        return written

    # ---------------------------------------------------------------- blobs

    def load_blob(self, btype: int, blob_id: bytes) -> bytes:
        """A blob's plaintext, from any of its copies (architecture.md 4, "Several copies").

        Each copy is authenticated and must hash to its id (an index may be forged by someone
        holding the key, who can also write an envelope that authenticates but holds other
        bytes). A copy that fails makes its pack suspect, tried last from then on, and the next
        copy is tried; when none is left, the packs no index lists are searched once (their
        headers) before giving up. The error raised is the first copy's, or one caused by a
        missing pack (PackMissing: the mount reloads the index on it)."""
        return self._load_any(btype, blob_id, set(), [])

    def _load_any(self, btype: int, blob_id: bytes, tried: set[bytes], errors: list[IntegrityError]) -> bytes:
        """`load_blob`, after the copies in the packs `tried` already failed with `errors`."""
        for attempt in range(2):
            for loc in self._ordered(blob_id, self.index.locations(blob_id)):
                if loc.pack_id in tried:
                    continue
                tried.add(loc.pack_id)
                try:
                    return self.load_blob_at(btype, blob_id, loc)
                except IntegrityError as exc:
                    errors.append(exc)
                    self._suspect_packs.add(loc.pack_id)
            if attempt == 0:
                self.scan_unlisted_packs()  # once per index; another thread may have done it
        if errors:
            raise next((e for e in errors if isinstance(e, PackMissing)), errors[0])
        raise _not_indexed(blob_id)

    def _ordered(self, blob_id: bytes, locs: list[BlobLocation]) -> list[BlobLocation]:
        """Copies in the order to try them: those known damaged or in suspect packs last."""
        if len(locs) < 2:
            return locs
        bad = self._damaged.get(blob_id, set())
        return sorted(locs, key=lambda loc: (loc.pack_id in bad, loc.pack_id in self._suspect_packs))

    def preferred_location(self, blob_id: bytes) -> BlobLocation | None:
        """The copy of a blob to read first."""
        locs = self._ordered(blob_id, self.index.locations(blob_id))
        return locs[0] if locs else None

    def load_blob_at(self, btype: int, blob_id: bytes, loc: BlobLocation) -> bytes:
        """The blob at one place; it must authenticate and hash to its id."""
        pack = loc.pack_id.hex()
        if self.files is not None and loc.type == TREE:
            try:
                envelope = self._load_tree_envelope(pack, loc)
            except NotFound as exc:
                raise PackMissing(f"pack {pack} is missing (needed for blob {blob_id.hex()[:16]})", pack) from exc
            except BackendError as exc:
                raise IntegrityError(f"pack {pack}: {exc}") from exc
        else:
            envelope = self._load_range(pack, loc.offset, loc.length, f" (needed for blob {blob_id.hex()[:16]})")
        try:
            return self.open_verified(btype, blob_id, envelope, pack, loc.raw_length)
        except IntegrityError:
            if self.files is None or loc.type != TREE:
                raise
            # the local copy may be what is damaged: drop it and ask the repository
            self.files.remove(FileType.DATA, pack)
            return self.open_verified(btype, blob_id, self._load_tree_envelope(pack, loc), pack, loc.raw_length)

    def load_data_blobs(self, blob_ids: list[bytes], gap: int = READ_GAP) -> list[bytes | Exception]:
        """Data blobs in as few ranged reads as possible: blobs of one pack whose envelopes lie
        within `gap` bytes of each other are read with one request (a folder's small files are
        usually adjacent in one pack). Each result is the blob or the error loading it alone
        would have raised, in the order of `blob_ids`: a blob whose first copy fails is loaded
        through `load_blob`, which tries its other copies."""
        out: list[bytes | Exception] = [IntegrityError("not loaded")] * len(blob_ids)
        by_pack: dict[bytes, list[tuple[BlobLocation, int]]] = {}
        first: list[BlobLocation | None] = []
        for i, blob_id in enumerate(blob_ids):
            loc = self.preferred_location(blob_id)
            first.append(loc)
            if loc is None:
                out[i] = _not_indexed(blob_id)
            else:
                by_pack.setdefault(loc.pack_id, []).append((loc, i))
        for pack_id, items in by_pack.items():
            items.sort(key=lambda item: item[0].offset)
            for group in read_ranges(items, lambda item: (item[0].offset, item[0].length), gap):
                self._load_group(pack_id.hex(), group, blob_ids, out)
        for i, result in enumerate(out):
            if isinstance(result, IntegrityError):
                tried = first[i]
                if tried is not None:
                    self._suspect_packs.add(tried.pack_id)
                try:
                    out[i] = self._load_any(DATA, blob_ids[i], {tried.pack_id} if tried else set(), [result])
                except IntegrityError as exc:
                    out[i] = exc
        return out

    def _load_group(
        self, pack: str, group: list[tuple[BlobLocation, int]], blob_ids: list[bytes], out: list[bytes | Exception]
    ) -> None:
        start = group[0][0].offset
        end = max(loc.offset + loc.length for loc, _ in group)
        context = f" (needed for blob {blob_ids[group[0][1]].hex()[:16]})" if len(group) == 1 else ""
        try:
            data = memoryview(self._load_range(pack, start, end - start, context))
        except IntegrityError as exc:
            for _, i in group:
                out[i] = exc
            return
        for loc, i in group:
            try:
                out[i] = self.open_verified(
                    DATA, blob_ids[i], data[loc.offset - start : loc.offset - start + loc.length], pack, loc.raw_length
                )
            except IntegrityError as exc:
                out[i] = exc

    def _load_range(self, pack: str, offset: int, length: int, context: str = "") -> bytes:
        """A ranged read of a data pack; a missing pack is PackMissing (the mount reloads the index
        on it), a storage error an IntegrityError naming the pack."""
        try:
            return self.backend.load(FileType.DATA, pack, offset, length)
        except NotFound as exc:
            raise PackMissing(f"pack {pack} is missing{context}", pack) from exc
        except BackendError as exc:
            raise IntegrityError(f"pack {pack}: {exc}") from exc

    def _load_tree_envelope(self, pack: str, loc: BlobLocation) -> bytes:
        """Tree packs are fetched whole once and kept: the next tree is likely in the same pack."""
        assert self.files is not None
        envelope = self.files.read_range(FileType.DATA, pack, loc.offset, loc.length)
        if envelope is None:
            data = _load_verified(self.backend, FileType.DATA, pack)
            self.files.put(FileType.DATA, pack, data)
            envelope = data[loc.offset : loc.offset + loc.length]
        return envelope

    def open_blob(
        self, btype: int, blob_id: bytes, envelope: bytes | memoryview, pack: str = "?", raw_length: int | None = None
    ) -> bytes:
        """The plaintext of a blob, which may not inflate past what its type can hold: a data
        blob the chunker's maximum, a tree MAX_TREE_BLOB, either its `raw_length` in the index
        when known (a compression bomb is an IntegrityError, not gigabytes of memory). The id is
        not checked here: readers go through `open_verified`; the two that call this (check
        --read-data, prune's repack) hash the plaintext themselves."""
        limit = self.max_blob_size(btype)
        if raw_length is not None:
            limit = min(limit, raw_length)
        try:
            data = decompress(self.cipher.open(envelope, blob_aad(btype, blob_id)), limit)
        except IntegrityError as exc:
            raise IntegrityError(f"pack {pack}: blob {blob_id.hex()[:16]}: {exc}") from exc
        return data

    def open_verified(
        self, btype: int, blob_id: bytes, envelope: bytes | memoryview, pack: str = "?", raw_length: int | None = None
    ) -> bytes:
        """`open_blob`, and the plaintext must hash to the blob's id: an envelope written with the
        key under another blob's id authenticates, but cannot hold that blob's bytes. Every tree
        load comes here, so no walk meets a folder that contains itself (a listing naming its own
        id, or one it lies in, cannot hash to it: format.md 3, architecture.md 1)."""
        data = self.open_blob(btype, blob_id, envelope, pack, raw_length)
        if self.blob_id(data) != blob_id:
            raise IntegrityError(f"pack {pack}: blob {blob_id.hex()[:16]} does not hash to its id")
        return data

    def max_blob_size(self, btype: int) -> int:
        return self.config.chunker[2] if btype == DATA else MAX_TREE_BLOB

    def has_blob(self, blob_id: bytes) -> bool:
        return self._has_good_copy(blob_id) or blob_id in self._pending

    def damaged_copies(self, blob_id: bytes) -> set[bytes]:
        """The packs whose copy of a blob a local `check --read-data` found damaged."""
        return self._damaged.get(blob_id, set())

    def _has_good_copy(self, blob_id: bytes) -> bool:
        """Indexed, and not only in packs where a local check found it damaged: a backup then
        stores the chunk again instead of building on the damaged copy (architecture.md 4)."""
        bad = self._damaged.get(blob_id)
        if bad is None:
            return blob_id in self.index
        return any(loc.pack_id not in bad for loc in self.index.locations(blob_id))

    def save_blob(self, btype: int, data: bytes | memoryview, blob_id: bytes | None = None) -> tuple[bytes, int]:
        """Stores a blob unless the repository has it; returns (id, bytes added)."""
        if len(data) > self.max_blob_size(btype):
            # it could never be read back (open_blob's bound): fail now, not at restore
            what = "a data blob" if btype == DATA else "a folder listing (tree)"
            raise BackupfsError(
                f"{what} of {len(data)} bytes exceeds the {self.max_blob_size(btype)} bytes this repository "
                "allows (format.md 9)"
            )
        if blob_id is None:
            blob_id = self.blob_id(data)
        if self._has_good_copy(blob_id):
            return blob_id, 0
        with self._pending_lock:
            if blob_id in self._pending:
                return blob_id, 0
            self._pending.add(blob_id)
        try:
            if btype == DATA:
                algorithm, level = self.compression, self.compression_level
            else:  # trees: ~20 % smaller than with lz4, and too few bytes for the speed to matter
                algorithm, level = ZSTD, TREE_ZSTD_LEVEL
            envelope = self.cipher.seal(compress(data, algorithm, level), blob_aad(btype, blob_id))
            self._get_packer().add(btype, blob_id, envelope, len(data))
        except BaseException:
            with self._pending_lock:
                self._pending.discard(blob_id)
            raise
        with self._pending_lock:
            self.stats_added_bytes += len(envelope)
        return blob_id, len(envelope)

    def _get_packer(self) -> Packer:
        if self._packer is None:
            with self._pending_lock:
                if self._packer is None:
                    self._packer = Packer(self.cipher, self.config.pack_size, self._pack_uploaded)
        return self._packer

    def _pack_uploaded(self, name: str, data: bytes, entries: list[PackEntry]) -> None:
        """Upload thread: pack first, then (every few packs) an index naming it (format.md 12)."""
        self._save_locked(FileType.DATA, name, data)
        pack_id = bytes.fromhex(name)
        with self._index_lock:
            self._unindexed[pack_id] = entries
            self.index.add_pack(pack_id, entries)
            if len(self._unindexed) >= INDEX_EVERY_PACKS:
                self._write_unindexed()
        with self._pending_lock:
            for e in entries:
                self._pending.discard(e.id)

    def index_leftover_packs(self) -> int:
        """Adopts complete packs that no index lists, so their blobs are re-used, not uploaded again.

        A backup killed between a pack and the index naming it (SIGKILL, power loss) leaves such
        packs (format.md 12); so does a backup still running, a damaged index file, or a forged
        index that supersedes the real ones. Each is trusted only through its own authenticated
        header (one ranged read of its end); the next index this process writes lists it.
        Returns how many packs were adopted.
        """
        known = self.index.pack_ids() - self.header_only_packs
        unlisted = [(n, size) for n, size in self.backend.list(FileType.DATA) if bytes.fromhex(n) not in known]
        adopted = 0
        for name, _size, entries in self.read_headers(unlisted):
            if isinstance(entries, IntegrityError) or not entries:
                continue  # damaged or vanished: check reports it, prune reclaims it
            pack_id = bytes.fromhex(name)
            with self._index_lock:
                self._unindexed[pack_id] = entries
                self.index.add_pack(pack_id, entries)
            adopted += 1
        return adopted

    def _write_unindexed(self) -> None:
        if self._unindexed:
            self.save_index(self._unindexed)
            self._unindexed = {}

    def flush(self) -> None:
        """Everything saved so far becomes durable and indexed."""
        if self._packer is not None:
            self._packer.flush()
        with self._index_lock:
            self._write_unindexed()

    # ---------------------------------------------------------------- trees

    def load_tree(self, tree_id: bytes) -> Listing:
        """A folder under the reader rules (format.md 9): what cannot be shown is left out or
        repaired, and said so in `Listing.problems`."""
        with self._tree_cache_lock:
            nodes = self._tree_cache.get(tree_id)
            if nodes is not None:
                self._tree_cache.move_to_end(tree_id)
                return nodes
        nodes = _decode_named(read_listing, self.load_blob(TREE, tree_id), f"tree {tree_id.hex()[:16]}")
        with self._tree_cache_lock:
            self._tree_cache[tree_id] = nodes
            if len(self._tree_cache) > TREE_CACHE_TREES:
                self._tree_cache.popitem(last=False)
        return nodes

    def load_tree_as_stored(self, tree_id: bytes) -> list[Node]:
        """Every entry as stored, not under the reader rules; raises on a malformed one. For
        code that must reproduce a tree or account for every blob it names (copy)."""
        return _decode_named(decode_tree, self.load_blob(TREE, tree_id), f"tree {tree_id.hex()[:16]}")

    def save_tree(self, nodes: list[Node]) -> bytes:
        return self.save_blob(TREE, encode_tree(nodes))[0]

    # ---------------------------------------------------------------- snapshots

    def save_snapshot(self, snap: Snapshot) -> str:
        """On a locked repository, first keeps what the snapshot needs locked long enough
        (format.md 13). If that fails the snapshot is saved all the same (its data is stored),
        and the error raised after names it: the next backup tries again."""
        if self.lock_unavailable is not None:
            self.warn(f"new files are not protected: {self.lock_unavailable}")
            self.lock_unavailable = None  # said once
        failed: BackupfsError | None = None
        if self.retention_on:
            try:
                self.retention_stats = self.protect_snapshot(snap)
            except BackupfsError as exc:
                failed = exc
        name = self.save_file(FileType.SNAPSHOT, snap.encode(), snapshot_fmt.AAD)
        if failed is not None:
            raise BackupfsError(
                f"snapshot {name[:8]} saved, but the files it needs could not all be kept under Object Lock "
                f"({failed}); the next backup tries again"
            ) from failed
        return name

    # ---------------------------------------------------------------- Object Lock (format.md 13)

    def keeper(self) -> retention.RetentionKeeper:
        with self._keeper_lock:
            if self._keeper is None:
                assert self.config.object_lock is not None and isinstance(self.backend, ObjectLock)
                cache = retention.RetentionCache(self.cache_dir, self.header.repo_id, self.master.id)
                self._keeper = retention.RetentionKeeper(self.backend, self.config.object_lock, cache, self.clock)
            return self._keeper

    def protect_snapshot(self, snap: Snapshot) -> retention.ProtectStats:
        """Extends the locks of the packs holding the snapshot's blobs, the live index files that
        list them, the key files and the config, where they would end too early."""
        keeper = self.keeper()
        when = snap.time_ns / 1e9
        if keeper.required_until(when) <= self.clock():
            return retention.ProtectStats()  # older than the retention: nothing left to promise
        packs = self.packs_of_tree(snap.tree)

        def entries(name: str) -> tuple[list[bytes], list[bytes]]:
            f = self.load_index_file(name)
            return f.supersedes, list(f.packs)

        read = keeper.index_catalog([n for n, _ in self.backend.list(FileType.INDEX)], entries)
        needed: list[retention.Key] = [(FileType.DATA, p.hex()) for p in sorted(packs)]
        needed += [(FileType.INDEX, n) for n in keeper.index_files_for(packs)]
        needed += [(FileType.KEY, n) for n, _ in self.backend.list(FileType.KEY)]
        needed.append((FileType.CONFIG, "config"))
        stats = keeper.protect(needed, when)
        stats.index_files_read = read
        return stats

    def packs_of_tree(self, root: bytes) -> set[bytes]:
        """Every pack holding a blob that the tree `root` reaches (its trees and file contents),
        each tree read once, by a few threads (remote trees cost a request each)."""
        packs: set[bytes] = set()
        seen: set[bytes] = set()
        todo: deque[bytes] = deque([root])
        running: set[Future[list[Node]]] = set()

        def locate(blob_id: bytes, what: str) -> None:
            loc = self.index.lookup(blob_id)
            if loc is None:
                raise BlobNotIndexed(f"{what} {blob_id.hex()[:16]} is not in the index", blob_id)
            packs.add(loc.pack_id)

        with ThreadPoolExecutor(TREE_WALKERS, thread_name_prefix="bfs-walk") as pool:
            try:
                while todo or running:
                    while todo and len(running) < 4 * TREE_WALKERS:
                        tree_id = todo.popleft()
                        if tree_id not in seen:
                            seen.add(tree_id)
                            locate(tree_id, "tree")
                            running.add(pool.submit(self.load_tree_as_stored, tree_id))
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        for node in fut.result():
                            if node.type == DIR and node.subtree is not None:
                                todo.append(node.subtree)
                            for _offset, blob_id in node.content or ():
                                locate(blob_id, "data blob")
            finally:
                for fut in running:
                    fut.cancel()
        return packs

    def load_snapshot(self, name: str) -> Snapshot:
        data = self.load_file(FileType.SNAPSHOT, name, snapshot_fmt.AAD)
        return _decode_named(Snapshot.decode, data, f"snapshots/{name}")

    def list_snapshots(
        self, on_damaged: Callable[[str, IntegrityError], None] | None = None, *, include_replaced: bool = False
    ) -> list[tuple[str, Snapshot]]:
        """All snapshots, oldest first; loaded in parallel for remote backends.

        A snapshot file that cannot be read raises, unless `on_damaged` is given: it is then told,
        and the snapshot left out (right for listing and for finding a backup's parent; wrong for
        prune, which must never decide what is unused from a partial list). A snapshot that a
        readable one names in `replaces` (an older version of it: `tag` through an append-only
        server, format.md 10) is left out unless `include_replaced`.
        """
        names = [n for n, _ in self.backend.list(FileType.SNAPSHOT)]
        if self.files is not None:
            self.files.forget_except(FileType.SNAPSHOT, set(names))

        def load(name: str) -> Snapshot | None:
            try:
                return self.load_snapshot(name)
            except IntegrityError as exc:
                if on_damaged is None:
                    raise
                on_damaged(name, exc)
                return None

        with ThreadPoolExecutor(8, thread_name_prefix="bfs-snap") as pool:
            snaps = list(pool.map(load, names))
        found = [(n, s) for n, s in zip(names, snaps, strict=True) if s is not None]
        if not include_replaced:
            replaced = {r.hex() for _n, s in found for r in s.replaces}
            found = [(n, s) for n, s in found if n not in replaced]
        return sorted(found, key=lambda p: (p[1].time_ns, p[0]))

    def remove_snapshot(self, sid: str, snap: Snapshot) -> None:
        """Removes a snapshot file and the earlier versions of it that it replaces (format.md 10):
        left behind, they would reappear once it is gone. The earlier versions go first: when
        one cannot (Object Lock retention), `sid` is still there to hide it."""
        for name in (*(r.hex() for r in snap.replaces), sid):
            try:
                self.backend.remove(FileType.SNAPSHOT, name)
            except NotFound:
                pass

    def find_snapshot(self, ref: str, snapshots: list[tuple[str, Snapshot]] | None = None) -> tuple[str, Snapshot]:
        """`latest` (any case, as restic; the newest snapshot that can be read: a damaged file is
        skipped with a warning), a full id or a unique id prefix; an ambiguous prefix is an error
        that names the snapshots it matches."""
        if ref.lower() == "latest" or ref.lower().startswith("latest:"):
            skipped: list[str] = []

            def skip(name: str, exc: IntegrityError) -> None:
                skipped.append(name)
                self._skip_snapshot(name, exc)

            snaps = self.list_snapshots(on_damaged=skip) if snapshots is None else snapshots
            if not snaps and skipped:
                raise IntegrityError(f"no snapshot can be read ({len(skipped)} damaged, e.g. {skipped[0][:8]})")
            if not snaps:
                raise UsageError("the repository has no snapshots")
            return snaps[-1]
        if not ref or any(c not in "0123456789abcdef" for c in ref.lower()):
            raise UsageError(f"invalid snapshot id {ref!r}")
        names = [n for n, _ in self.backend.list(FileType.SNAPSHOT) if n.startswith(ref.lower())]
        if not names:
            raise UsageError(f"no snapshot matches {ref!r}")
        if len(names) > 1:
            shown = ", ".join(sorted(n[:SHORT_ID_CANDIDATE] for n in names)[:MAX_CANDIDATES])
            more = f" and {len(names) - MAX_CANDIDATES} more" if len(names) > MAX_CANDIDATES else ""
            raise UsageError(
                f"snapshot id {ref!r} is ambiguous: it matches {len(names)} snapshots ({shown}{more}); give more digits"
            )
        return names[0], self.load_snapshot(names[0])

    def _skip_snapshot(self, name: str, exc: IntegrityError) -> None:
        self._warn_once(
            f"snapshots/{name}",
            f"snapshot {name[:8]} cannot be read and was skipped ({exc}); `backupfs forget {name[:8]}` removes it",
        )

    # ---------------------------------------------------------------- verify records

    def save_verify_record(self, record: VerifyRecord) -> str:
        return self.save_file(FileType.VERIFY, record.encode(), verify_fmt.AAD)

    def list_verify_records(
        self, on_damaged: Callable[[str, IntegrityError], None]
    ) -> list[tuple[str, VerifyRecord]]:
        """Every drill's record, oldest first; one that cannot be read is told to `on_damaged`
        and left out (records only schedule and report, format.md 14)."""
        names = [n for n, _ in self.backend.list(FileType.VERIFY)]
        if self.files is not None:
            self.files.forget_except(FileType.VERIFY, set(names))

        def load(name: str) -> VerifyRecord | None:
            try:
                data = self.load_file(FileType.VERIFY, name, verify_fmt.AAD)
                return _decode_named(VerifyRecord.decode, data, f"verify/{name}")
            except IntegrityError as exc:
                on_damaged(name, exc)
            except NotFound:  # removed by hand meanwhile
                pass
            return None

        with ThreadPoolExecutor(8, thread_name_prefix="bfs-verify-record") as pool:
            records = list(pool.map(load, names))
        found = [(n, r) for n, r in zip(names, records, strict=True) if r is not None]
        return sorted(found, key=lambda p: (p[1].end_ns, p[0]))

    # ---------------------------------------------------------------- misc

    def chunker(self) -> Chunker:
        return Chunker(self.config.chunker, self.master.chunker_seed())

    def close(self) -> None:
        if self._packer is not None:
            self._packer.close()
        for lk in self._locks:
            lk.release()
        self._locks.clear()
        self.backend.close()


def _start_retention(backend: Backend, config: ObjectLockConfig) -> None:
    """Every later save (but of lock files) is locked for `retention.write_seconds`."""
    try:
        if not isinstance(backend, ObjectLock):
            raise BackendError(f"{backend.location} has no Object Lock")
        backend.set_retention(config.mode, retention.write_seconds(config))
    except BackendError as exc:
        raise UsageError(
            f"this repository is kept under S3 Object Lock, which {backend.location} does not offer ({exc}); "
            "only s3: repositories can be"
        ) from exc


def _require_object_lock(backend: Backend) -> None:
    """UsageError unless the storage enforces retention and leaves lock files deletable."""
    assert isinstance(backend, ObjectLock)
    support = backend.retention_support()
    where = backend.location
    if support.enabled is None:
        raise UsageError(
            f"cannot tell whether {where} has Object Lock: the credentials may not read the bucket's Object "
            "Lock configuration (s3:GetBucketObjectLockConfiguration)"
        )
    if not support.enabled:
        raise UsageError(
            f"the bucket of {where} has no Object Lock: use a bucket created with it (`aws s3api create-bucket "
            "--object-lock-enabled-for-bucket ...`, or a new bucket name: init creates it so), or on AWS enable "
            'it on this one (docs/backends.md, "S3 Object Lock")'
        )
    if support.default_retention:
        raise UsageError(
            f"the bucket of {where} gives every new object a default retention ({support.default_retention}): "
            "lock files, which must be deletable, would be locked too. Remove the bucket's default retention "
            "rule; backupfs sets a retention on each file itself"
        )


def _usable_keys(
    backend: Backend, keys: list[tuple[str, int]], hint: str | None, warn: Callable[[str], None]
) -> tuple[list[tuple[str, KeyFile]], list[str]]:
    """The key files worth a password, in the order to try them (hinted, then cheapest), and a
    description of each one that is not. Only the parameters are read: nothing is derived."""
    hint = (hint or "").lower() or None
    usable: list[tuple[bool, int, str, KeyFile]] = []
    damaged: list[str] = []
    for name, size in keys:
        if size > MAX_KEY_FILE:
            damaged.append(f"keys/{name}: {size} bytes, too large for a key file")
            continue
        try:
            kf = KeyFile.decode(_load_verified(backend, FileType.KEY, name))
        except IntegrityError as exc:
            damaged.append(f"keys/{name}: {exc}")
            continue
        try:
            cost = kdf_cost(kf.wrapped)
        except IntegrityError as exc:
            warn(f"key file {name[:8]} skipped: {exc} (remove it with `backupfs key remove {name[:8]}`)")
            damaged.append(f"keys/{name}: {exc}")
            continue
        usable.append((not (hint is not None and name.startswith(hint)), cost, name, kf))
    if hint is not None and not any(not later for later, _c, _n, _k in usable):
        warn(f"key hint {hint!r} matches no usable key file; trying them all")
    usable.sort(key=lambda k: k[:3])
    return [(name, kf) for _later, _cost, name, kf in usable], damaged


def _load_config(backend: Backend) -> ConfigHeader:
    try:
        raw = backend.load(FileType.CONFIG, "config")
    except NotFound as exc:
        raise RepositoryNotFound(f"no repository at {backend.location}") from exc
    try:
        return ConfigHeader.decode(raw)
    except IntegrityError as exc:
        raise _config_damage(exc) from exc


def _config_body(header: ConfigHeader, master: MasterKey) -> ConfigBody:
    try:
        cipher = Cipher(header.aead, master.enc)
        plain = cipher.open(header.body, config_aad(header.repo_id))
        return ConfigBody.decode(decompress(plain, file_limit(len(header.body))))
    except IntegrityError as exc:
        raise _config_damage(exc) from exc


def _config_damage(exc: IntegrityError) -> IntegrityError:
    """The config named once: the decoders' own messages already start with it."""
    message = str(exc)
    return IntegrityError(message if message.startswith("repository config") else f"repository config: {message}")


def _not_indexed(blob_id: bytes) -> BlobNotIndexed:
    return BlobNotIndexed(f"blob {blob_id.hex()[:16]} is not in the index", blob_id)


def _load_verified(backend: Backend, ftype: FileType, name: str) -> bytes:
    """A whole repository file whose bytes must hash to its name (bit rot, truncation)."""
    data = backend.load(ftype, name)
    if file_id(data) != name:
        raise IntegrityError(f"{ftype.value}/{name} is damaged (its content does not match its name)")
    return data


_T = TypeVar("_T")


def _decode_named(decode: Callable[[bytes], _T], data: bytes, what: str) -> _T:
    """Decoding errors name the repository object, so the user knows what is damaged."""
    try:
        return decode(data)
    except IntegrityError as exc:
        raise IntegrityError(f"{what}: {exc}") from exc
