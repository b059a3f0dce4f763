"""Opening, reading and writing a repository: the one place that knows the write ordering."""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from backupfs.backends.base import Backend, FileType
from backupfs.chunker import DEFAULT_PARAMS, MAX_CHUNK_LIMIT, Chunker
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
    IntegrityError,
    NotFound,
    RepositoryNotFound,
    UsageError,
    WrongPassword,
)
from backupfs.format import index as index_fmt
from backupfs.format import lock as lock_fmt
from backupfs.format import snapshot as snapshot_fmt
from backupfs.format.config import ConfigBody, ConfigHeader, config_aad
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
from backupfs.format.tree import Listing, Node, decode_tree, encode_tree, read_listing
from backupfs.repository import locks
from backupfs.repository.cache import IndexCache, prepare_cache
from backupfs.repository.filecache import FileCache
from backupfs.repository.masterindex import BlobLocation, MasterIndex
from backupfs.repository.packer import Packer

DEFAULT_PACK_SIZE = 16 * 1024 * 1024
INDEX_EVERY_PACKS = 10
# The local index cache is rewritten when more index files than this were read beside it: fewer
# are cheap to read and overlay each time, and rewriting the cache costs a full compaction.
INDEX_CACHE_REFRESH_FILES = 16
TREE_ZSTD_LEVEL = 3  # tree blobs, whatever the data's compression (design.md 3)
MAX_TREE_BLOB = 256 << 20  # one folder's listing (design.md 9): ~1 million entries; more is a bomb
MAX_KEY_FILE = 64 << 10  # a key file is ~300 bytes; a bigger one is not read
READ_GAP = 256 << 10  # unused bytes a batched read goes through rather than making another request
SHORT_ID_CANDIDATE = 12  # digits shown of each snapshot an ambiguous prefix matches
MAX_CANDIDATES = 10  # of those, at most this many are named


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
    ):
        self.backend = backend
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
        self.stats_added_blobs = 0

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
    ) -> Repository:
        parse_compression(compression)
        if not 1 << 20 <= pack_size <= 1 << 30:
            raise UsageError("pack size must be between 1 MiB and 1 GiB")
        if not 0 < chunker[0] <= chunker[2] <= MAX_CHUNK_LIMIT:
            raise UsageError(f"chunk sizes must satisfy 0 < min <= max <= {MAX_CHUNK_LIMIT}")
        if backend.exists():
            raise BackupfsError(f"a repository already exists at {backend.location}")
        master = master or MasterKey.generate()
        header_suite = suite or default_suite()
        repo_id = os.urandom(32)
        body = ConfigBody(chunker, pack_size, compression)
        cipher = Cipher(header_suite, master.enc)
        header = ConfigHeader(repo_id, header_suite, cipher.seal(compress(body.encode(), NONE), config_aad(repo_id)))
        backend.create()
        repo = cls(backend, master, header, body, "")
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
        out of the accepted range are skipped with a warning (design.md 4)."""
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
            return cls(backend, master, header, _config_body(header, master), name, cache_dir, cache_files)
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
            # these make packs count (design.md 12): not if a prune may have deleted them meanwhile
            self.check_lock()
        data = self._seal(plaintext, aad)
        name = file_id(data)
        self.backend.save(ftype, name, data)
        return name

    def load_file(self, ftype: FileType, name: str, aad: bytes) -> bytes:
        cached = self.files.get(ftype, name) if self.files is not None and ftype is FileType.SNAPSHOT else None
        if cached is not None:
            data = cached
        else:
            data = _load_verified(self.backend, ftype, name)
            if self.files is not None and ftype is FileType.SNAPSHOT:
                self.files.put(ftype, name, data)
        try:
            return self._open(data, aad)
        except IntegrityError as exc:
            raise IntegrityError(f"{ftype.value}/{name}: {exc}") from exc

    # ---------------------------------------------------------------- keys

    def _write_key(self, password: bytes, kdf: tuple[int, int] = (ARGON2_OPS, ARGON2_MEM)) -> str:
        wrapped = wrap_master_key(self.master, password, key_aad(self.header.repo_id), *kdf)
        meta = self._seal(encode_meta(socket.gethostname(), getpass.getuser(), time.time_ns()), META_AAD, NONE)
        data = KeyFile(wrapped, meta).encode()
        name = file_id(data)
        self.backend.save(FileType.KEY, name, data)
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
        """New key file first, old one removed after: a crash never leaves no key."""
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
        """
        names = [name for name, _ in self.backend.list(FileType.INDEX)]
        cache = IndexCache(self.cache_dir, self.header.repo_id, self.master.id) if self.cache_dir else None
        cached = cache.load() if cache is not None else None
        covered: set[str] = set()
        base = None
        if cached is not None and cached[0] <= set(names):
            covered, base = cached
        files = self._load_index_files([n for n in names if n not in covered])
        superseded = {s for f in files.values() for s in f.supersedes}
        if base is not None and any(bytes.fromhex(n) in superseded for n in covered):
            # a prune replaced index files the cache was built from: start over
            covered, base = set(), None
            files = self._load_index_files(names)
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
        self.index = index
        if self.files is not None:
            self.files.forget_except(FileType.DATA, {p.hex() for p in index.pack_ids()})
        return set(names)

    def load_index_file(self, name: str) -> IndexFile:
        return _decode_named(IndexFile.decode, self.load_file(FileType.INDEX, name, index_fmt.AAD), f"index/{name}")

    def _load_index_files(self, names: list[str]) -> dict[str, IndexFile]:
        def load(name: str) -> tuple[str, IndexFile]:
            return name, self.load_index_file(name)

        if len(names) <= 1:
            return dict(load(n) for n in names)
        with ThreadPoolExecutor(8, thread_name_prefix="bfs-index") as pool:
            return dict(pool.map(load, names))

    def index_files(self) -> dict[str, IndexFile]:
        names = [name for name, _ in self.backend.list(FileType.INDEX)]
        return self._load_index_files(names)

    def save_index(self, packs: dict[bytes, list[PackEntry]], supersedes: Iterable[bytes] = ()) -> str:
        return self.save_file(FileType.INDEX, IndexFile(dict(packs), list(supersedes)).encode(), index_fmt.AAD)

    # ---------------------------------------------------------------- blobs

    def load_blob(self, btype: int, blob_id: bytes) -> bytes:
        loc = self.index.lookup(blob_id)
        if loc is None:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} is not in the index")
        return self.load_blob_at(btype, blob_id, loc)

    def load_blob_at(self, btype: int, blob_id: bytes, loc: BlobLocation) -> bytes:
        pack = loc.pack_id.hex()
        if self.files is not None and loc.type == TREE:
            try:
                envelope = self._load_tree_envelope(pack, loc)
            except NotFound as exc:
                raise IntegrityError(f"pack {pack} is missing (needed for blob {blob_id.hex()[:16]})") from exc
            except BackendError as exc:
                raise IntegrityError(f"pack {pack}: {exc}") from exc
        else:
            envelope = self._load_range(pack, loc.offset, loc.length, f" (needed for blob {blob_id.hex()[:16]})")
        try:
            return self.open_blob(btype, blob_id, envelope, pack, loc.raw_length)
        except IntegrityError:
            if self.files is None or loc.type != TREE:
                raise
            # the local copy may be what is damaged: drop it and ask the repository
            self.files.remove(FileType.DATA, pack)
            return self.open_blob(btype, blob_id, self._load_tree_envelope(pack, loc), pack, loc.raw_length)

    def load_data_blobs(self, blob_ids: list[bytes], gap: int = READ_GAP) -> list[bytes | Exception]:
        """Data blobs in as few ranged reads as possible: blobs of one pack whose envelopes lie
        within `gap` bytes of each other are read with one request (a folder's small files are
        usually adjacent in one pack). Each result is the blob or the error loading it alone
        would have raised, in the order of `blob_ids`."""
        out: list[bytes | Exception] = [IntegrityError("not loaded")] * len(blob_ids)
        by_pack: dict[bytes, list[tuple[BlobLocation, int]]] = {}
        for i, blob_id in enumerate(blob_ids):
            loc = self.index.lookup(blob_id)
            if loc is None:
                out[i] = IntegrityError(f"blob {blob_id.hex()[:16]} is not in the index")
            else:
                by_pack.setdefault(loc.pack_id, []).append((loc, i))
        for pack_id, items in by_pack.items():
            items.sort(key=lambda item: item[0].offset)
            for group in read_ranges(items, lambda item: (item[0].offset, item[0].length), gap):
                self._load_group(pack_id.hex(), group, blob_ids, out)
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
                out[i] = self.open_blob(
                    DATA, blob_ids[i], data[loc.offset - start : loc.offset - start + loc.length], pack, loc.raw_length
                )
            except IntegrityError as exc:
                out[i] = exc

    def _load_range(self, pack: str, offset: int, length: int, context: str = "") -> bytes:
        """A ranged read of a data pack; a missing pack or a storage error is an IntegrityError
        (a NotFound stays its cause: the mount reloads the index on it)."""
        try:
            return self.backend.load(FileType.DATA, pack, offset, length)
        except NotFound as exc:
            raise IntegrityError(f"pack {pack} is missing{context}") from exc
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
        when known (a compression bomb is an IntegrityError, not gigabytes of memory)."""
        limit = self.max_blob_size(btype)
        if raw_length is not None:
            limit = min(limit, raw_length)
        try:
            data = decompress(self.cipher.open(envelope, blob_aad(btype, blob_id)), limit)
        except IntegrityError as exc:
            raise IntegrityError(f"pack {pack}: blob {blob_id.hex()[:16]}: {exc}") from exc
        return data

    def max_blob_size(self, btype: int) -> int:
        return self.config.chunker[2] if btype == DATA else MAX_TREE_BLOB

    def has_blob(self, blob_id: bytes) -> bool:
        return blob_id in self.index or blob_id in self._pending

    def save_blob(self, btype: int, data: bytes | memoryview, blob_id: bytes | None = None) -> tuple[bytes, int]:
        """Stores a blob unless the repository has it; returns (id, bytes added)."""
        if len(data) > self.max_blob_size(btype):
            # it could never be read back (open_blob's bound): fail now, not at restore
            what = "a data blob" if btype == DATA else "a folder listing (tree)"
            raise BackupfsError(
                f"{what} of {len(data)} bytes exceeds the {self.max_blob_size(btype)} bytes this repository "
                "allows (design.md 9)"
            )
        if blob_id is None:
            blob_id = self.blob_id(data)
        if blob_id in self.index:
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
            self.stats_added_blobs += 1
        return blob_id, len(envelope)

    def _get_packer(self) -> Packer:
        if self._packer is None:
            with self._pending_lock:
                if self._packer is None:
                    self._packer = Packer(self.cipher, self.config.pack_size, self._pack_uploaded)
        return self._packer

    def _pack_uploaded(self, name: str, data: bytes, entries: list[PackEntry]) -> None:
        """Upload thread: pack first, then (every few packs) an index naming it (design.md 12)."""
        self.backend.save(FileType.DATA, name, data)
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
        packs (design.md 12); so does a backup still running. Each is read whole and must hash to
        its name and carry an authentic header before it is trusted; the next index this process
        writes lists it. Returns how many packs were adopted.
        """
        known = self.index.pack_ids()
        adopted = 0
        for name, _size in list(self.backend.list(FileType.DATA)):
            try:
                pack_id = bytes.fromhex(name)
            except ValueError:
                continue
            if len(pack_id) != 32 or pack_id in known:
                continue
            try:
                entries = self.read_pack_header(_load_verified(self.backend, FileType.DATA, name))
            except (IntegrityError, BackendError):
                continue  # damaged or vanished: check reports it, prune reclaims it
            with self._index_lock:
                self._unindexed[pack_id] = entries
                self.index.add_pack(pack_id, entries)
            adopted += 1
        return adopted

    def read_pack_header(self, data: bytes) -> list[PackEntry]:
        """The blob list of a whole pack, checked to lie inside it."""
        hoff, hlen = header_location(len(data), data[-TRAILER.size :])
        entries = decode_header(self._open(data[hoff : hoff + hlen], HEADER_AAD))
        if any(e.offset + e.length > hoff for e in entries):
            raise IntegrityError("pack header points beyond the blobs")
        return entries

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
        """A folder under the reader rules (design.md 9): what cannot be shown is left out or
        repaired, and said so in `Listing.problems`."""
        with self._tree_cache_lock:
            nodes = self._tree_cache.get(tree_id)
            if nodes is not None:
                self._tree_cache.move_to_end(tree_id)
                return nodes
        nodes = _decode_named(read_listing, self.load_blob(TREE, tree_id), f"tree {tree_id.hex()[:16]}")
        with self._tree_cache_lock:
            self._tree_cache[tree_id] = nodes
            if len(self._tree_cache) > 256:
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
        return self.save_file(FileType.SNAPSHOT, snap.encode(), snapshot_fmt.AAD)

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
        server, design.md 10) is left out unless `include_replaced`.
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
        """Removes a snapshot file and the earlier versions of it that it replaces (design.md 10):
        left behind, they would reappear once it is gone."""
        for name in (sid, *(r.hex() for r in snap.replaces)):
            try:
                self.backend.remove(FileType.SNAPSHOT, name)
            except NotFound:
                pass

    def find_snapshot(self, ref: str, snapshots: list[tuple[str, Snapshot]] | None = None) -> tuple[str, Snapshot]:
        """`latest` (any case, as restic), a full id or a unique id prefix; an ambiguous prefix is
        an error that names the snapshots it matches."""
        if ref.lower() == "latest" or ref.lower().startswith("latest:"):
            snaps = self.list_snapshots() if snapshots is None else snapshots
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
        raise IntegrityError(f"config: {exc}") from exc


def _config_body(header: ConfigHeader, master: MasterKey) -> ConfigBody:
    try:
        cipher = Cipher(header.aead, master.enc)
        plain = cipher.open(header.body, config_aad(header.repo_id))
        return ConfigBody.decode(decompress(plain, file_limit(len(header.body))))
    except IntegrityError as exc:
        raise IntegrityError(f"config: {exc}") from exc


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
