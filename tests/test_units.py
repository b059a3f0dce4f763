"""Unit tests of the pure layers and the repository on the memory backend.

These pin the properties the format spec promises (round trips, AAD binding, strict decoding), so
that a corrupt or forged object is always an IntegrityError and never a crash. The end-to-end
proofs live in the CLI tests; these are the fast, exhaustive edge cases.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
from collections.abc import Callable
from typing import Any

import blake3
import msgpack
import nacl.bindings as nb
import pytest
import zstandard

from backupfs import compress as comp
from backupfs import crypto
from backupfs.backends.base import FileType
from backupfs.backends.memory import MemoryBackend
from backupfs.chunker import Chunker
from backupfs.crypto import AEGIS256, SUITES, XCHACHA, Cipher, IdHasher, MasterKey, unwrap_master_key, wrap_master_key
from backupfs.errors import (
    BackendError,
    BlobNotIndexed,
    IntegrityError,
    PackMissing,
    UsageError,
    WrongPassword,
    sole_error,
)
from backupfs.format import config as config_fmt
from backupfs.format import index as index_fmt
from backupfs.format import keyfile as keyfile_fmt
from backupfs.format import lock as lock_fmt
from backupfs.format import pack as pack_fmt
from backupfs.format import snapshot as snapshot_fmt
from backupfs.format import tree as tree_fmt
from backupfs.format import verifyrecord as verify_fmt
from backupfs.format.pack import DATA, TREE, PackEntry, blob_aad
from backupfs.prune.table import BlobTable
from backupfs.repository.masterindex import MasterIndex
from backupfs.repository.packer import Packer
from backupfs.repository.repo import Repository

FAST_KDF = (1, 8 * 1024 * 1024)  # Argon2id at its cheapest sane setting: unit tests need no hardness


def rand(n: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes, fast (BLAKE3 XOF)."""
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)


def available_suites() -> list[str]:
    return [s for s in SUITES if s != AEGIS256 or hasattr(nb, "crypto_aead_aegis256_encrypt")]


# --------------------------------------------------------------------------- crypto


@pytest.mark.parametrize("suite", available_suites())
def test_cipher_round_trip_and_tamper(suite: str) -> None:
    c = Cipher(suite, os.urandom(32))
    for size in (0, 1, 1000, 100_000):
        data = rand(size, size)
        env = c.seal(data, b"aad")
        assert len(env) == size + c.overhead
        assert c.open(env, b"aad") == data
        assert c.open(memoryview(env), b"aad") == data
    env = c.seal(b"secret payload", b"aad")
    for pos in (0, c.nonce_size, len(env) - 1):  # nonce, ciphertext, tag
        bad = bytearray(env)
        bad[pos] ^= 1
        with pytest.raises(IntegrityError):
            c.open(bytes(bad), b"aad")
    with pytest.raises(IntegrityError):
        c.open(env, b"other aad")
    with pytest.raises(IntegrityError):
        c.open(env[: c.overhead - 1], b"aad")
    with pytest.raises(IntegrityError):
        Cipher(suite, os.urandom(32)).open(env, b"aad")  # another key


def test_cipher_nonces_are_random() -> None:
    c = Cipher(XCHACHA, os.urandom(32))
    assert c.seal(b"x", b"") != c.seal(b"x", b"")


def test_unknown_suite_is_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        Cipher("rot13", os.urandom(32))


def test_master_key_round_trip_and_garbage() -> None:
    mk = MasterKey.generate()
    assert MasterKey.from_bytes(mk.to_bytes()) == mk
    for garbage in (b"", b"\xc1", rand(96), msgpack.packb({"enc": b"x"}), msgpack.packb([1, 2, 3])):
        with pytest.raises(IntegrityError):
            MasterKey.from_bytes(garbage)
    short = msgpack.packb({"enc": b"a" * 31, "id": b"b" * 32, "chunker": b"c" * 32})
    with pytest.raises(IntegrityError):
        MasterKey.from_bytes(short)


def test_chunker_seed_fits_63_bits_and_differs_per_key() -> None:
    seeds = {MasterKey.generate().chunker_seed() for _ in range(20)}
    assert len(seeds) == 20
    assert all(0 < s < 1 << 63 and s & 1 for s in seeds)


def test_ids_are_keyed() -> None:
    data = b"a well known file"
    a, b = IdHasher(os.urandom(32)), IdHasher(os.urandom(32))
    assert a(data) != b(data)
    assert a(data) != blake3.blake3(data).digest()
    assert a(data) == a(memoryview(data))


def test_wrap_unwrap_master_key() -> None:
    mk = MasterKey.generate()
    fields = wrap_master_key(mk, b"pw", b"aad", *FAST_KDF)
    assert unwrap_master_key(fields, b"pw", b"aad") == mk
    with pytest.raises(WrongPassword):
        unwrap_master_key(fields, b"wrong", b"aad")
    with pytest.raises(WrongPassword):
        unwrap_master_key(fields, b"pw", b"another repository")


@pytest.mark.parametrize(
    "change",
    [
        {"salt": 5},
        {"salt": b"short"},
        {"nonce": b"\x00" * 3},
        {"nonce": None},
        {"data": "text"},
        {"ops": "3"},
        {"ops": 0},
        {"mem": 1},
        {"mem": 1 << 40},
        {"kdf": "scrypt"},
        {"ops": True},
    ],
)
def test_unwrap_rejects_malformed_key_fields(change: dict[str, Any]) -> None:
    """A key file is plaintext an attacker can edit: bad fields must be IntegrityError, not a crash."""
    fields = wrap_master_key(MasterKey.generate(), b"pw", b"aad", *FAST_KDF)
    fields.update(change)
    with pytest.raises(IntegrityError):
        unwrap_master_key(fields, b"pw", b"aad")


# --------------------------------------------------------------------------- compression


@pytest.mark.parametrize("algorithm,level", [(comp.LZ4, 0), (comp.ZSTD, 3), (comp.ZSTD, 19), (comp.NONE, 0)])
def test_compression_round_trip(algorithm: int, level: int) -> None:
    text = b"backupfs compresses text like this line\n" * 5000
    for data in (b"", b"x", text, rand(100_000)):
        payload = comp.compress(data, algorithm, level)
        assert comp.decompress(payload, len(data)) == data
    if algorithm != comp.NONE:
        assert comp.compress(text, algorithm, level)[0] == algorithm
        assert len(comp.compress(text, algorithm, level)) < len(text) // 10
    # incompressible data is stored raw (restore then pays no decompression)
    assert comp.compress(rand(100_000), algorithm, level)[0] == comp.NONE


def test_compression_accepts_memoryview() -> None:
    data = b"abc" * 10000
    assert comp.decompress(comp.compress(memoryview(data), comp.LZ4), len(data)) == data


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x07abc", b"\x01" + b"\xff\xff\xff\x7f", b"\x01\x10\x00\x00\x00\xff", b"\x02" + b"not a zstd frame"],
)
def test_decompress_garbage_is_integrity_error(payload: bytes) -> None:
    with pytest.raises(IntegrityError):
        comp.decompress(payload, 1 << 20)


def test_decompress_truncated_frames() -> None:
    text = b"some text that compresses well " * 1000
    for algorithm in (comp.LZ4, comp.ZSTD):
        payload = comp.compress(text, algorithm, 3)
        for cut in (2, len(payload) // 2, len(payload) - 1):
            with pytest.raises(IntegrityError):
                comp.decompress(payload[:cut], len(text))


@pytest.mark.parametrize("algorithm", [comp.LZ4, comp.ZSTD, comp.NONE])
def test_decompress_refuses_more_than_its_bound(algorithm: int) -> None:
    """A bomb is refused from what it declares, before the memory is taken; the bound itself is fine."""
    data = bytes(1 << 20) if algorithm != comp.NONE else rand(1 << 20)
    payload = comp.compress(data, algorithm, 3)
    assert payload[0] == algorithm
    assert comp.decompress(payload, len(data)) == data
    with pytest.raises(IntegrityError, match="more than the 1048575"):
        comp.decompress(payload, len(data) - 1)


def test_decompress_refuses_declared_sizes_it_would_have_to_allocate() -> None:
    # an lz4 block claiming 2 GiB and a zstd frame header claiming 1 TiB: refused unread
    with pytest.raises(IntegrityError, match="declares 2147483647 bytes"):
        comp.decompress(b"\x01" + (2**31 - 1).to_bytes(4, "little") + b"\x00" * 16, 8 << 20)
    frame = bytearray(zstandard.ZstdCompressor(write_content_size=True).compress(b"x"))
    huge = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(1 << 20))
    assert zstandard.frame_content_size(bytes(huge)) == 1 << 20
    with pytest.raises(IntegrityError, match="declares 1048576 bytes"):
        comp.decompress(b"\x02" + huge, 8 << 10)
    assert comp.decompress(b"\x02" + bytes(frame), 1) == b"x"


def test_decompress_bounds_zstd_frames_without_a_size() -> None:
    """Such a frame (not written by backupfs, but an attacker's) is streamed up to the bound."""
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(4 << 20))
    assert zstandard.frame_content_size(frame) == -1
    assert comp.decompress(b"\x02" + frame, 4 << 20) == bytes(4 << 20)
    with pytest.raises(IntegrityError, match="inflates to more than"):
        comp.decompress(b"\x02" + frame, (4 << 20) - 1)


@pytest.mark.parametrize("spec", ["gzip", "zstd:0", "zstd:23", "zstd:x", "lz4:3", "none:1", ""])
def test_parse_compression_rejects(spec: str) -> None:
    with pytest.raises(UsageError):
        comp.parse_compression(spec)


def test_parse_compression_accepts() -> None:
    assert comp.parse_compression("lz4") == (comp.LZ4, 0)
    assert comp.parse_compression("zstd") == (comp.ZSTD, 3)
    assert comp.parse_compression("zstd:19") == (comp.ZSTD, 19)
    assert comp.parse_compression("none") == (comp.NONE, 0)


# --------------------------------------------------------------------------- chunker


def _cut_sizes(chunker: Chunker, data: bytes) -> list[int]:
    return [len(c) for c in chunker.cut(data)]


def test_chunker_properties() -> None:
    params = (64 * 1024, 64 * 1024, 512 * 1024)
    data = rand(8 * 1024 * 1024, 7)
    a = Chunker(params, MasterKey.generate().chunker_seed())
    sizes = _cut_sizes(a, data)
    assert sum(sizes) == len(data)
    assert b"".join(bytes(c) for c in a.cut(data)) == data
    assert all(params[0] <= s <= params[2] for s in sizes[:-1])
    assert sizes == _cut_sizes(a, data)  # deterministic
    # another secret cuts elsewhere: boundaries do not reveal content to the provider
    b = Chunker(params, MasterKey.generate().chunker_seed())
    assert _cut_sizes(b, data) != sizes
    # content-defined: an insertion near the start leaves later boundaries in place
    shifted = data[:1000] + b"inserted" + data[1000:]
    ends_a = set(itertools.accumulate(sizes))
    ends_s = {e - 8 for e in itertools.accumulate(_cut_sizes(a, shifted))}
    assert len(ends_a & ends_s) >= len(ends_a) - 3
    assert _cut_sizes(a, b"") == []
    assert _cut_sizes(a, b"tiny") == [4]


# --------------------------------------------------------------------------- format objects


def _node(name: bytes, **kw: Any) -> tree_fmt.Node:
    return tree_fmt.Node(name=name, type=kw.pop("type", tree_fmt.FILE), **kw)


def test_tree_round_trip_every_field() -> None:
    nodes = [
        _node(
            b"caf\xe9 \xff",
            mode=0o4755,
            uid=7,
            gid=8,
            user="u",
            group="g",
            mtime_ns=4_102_444_800_000_000_001,
            atime_ns=-123_456_789_987_654_321,
            ctime_ns=5,
            size=3 << 30,
            inode=12,
            device=13,
            nlink=2,
            xattrs=[(b"user.a", b"\x00\xff"), (b"system.posix_acl_access", b"acl")],
            content=[(0, b"i" * 32), (1 << 20, b"j" * 32)],
            file_hash=b"h" * 32,
        ),
        _node(b"a", type=tree_fmt.DIR, subtree=b"s" * 32),
        _node(b"L" * 255, type=tree_fmt.SYMLINK, link_target=b"/t\xe9"),
        _node(b"dev", type=tree_fmt.BLOCKDEV, rdev=0x0700),
        _node(b"fifo", type=tree_fmt.FIFO),
    ]
    decoded = tree_fmt.decode_tree(tree_fmt.encode_tree(nodes))
    assert decoded == sorted(nodes, key=lambda n: n.name)
    # entry order does not change the blob (equal directories deduplicate)
    assert tree_fmt.encode_tree(nodes) == tree_fmt.encode_tree(list(reversed(nodes)))


def test_tree_readers_ignore_keys_they_do_not_know() -> None:
    """What keeps the format at version 1 when a node gains an optional key (`fh` did, format.md 9):
    both decoders take the keys they know and drop the others, in either decoding path."""
    entry = {"n": b"f", "t": "f", "m": 0o644, "s": 3, "c": [[0, b"i" * 32]], "fh": b"h" * 32, "zz-future": [1]}
    blob = msgpack.packb({"v": 1, "entries": [entry]}, use_bin_type=True)
    for nodes in (tree_fmt.decode_tree(blob), tree_fmt.read_listing(blob)):
        assert [(n.name, n.size, n.file_hash) for n in nodes] == [(b"f", 3, b"h" * 32)]
    assert not tree_fmt.read_listing(blob).problems
    without = {k: v for k, v in entry.items() if k != "zz-future"}
    assert tree_fmt.decode_tree(msgpack.packb({"v": 1, "entries": [without]}, use_bin_type=True))[0].file_hash


def test_file_hash_is_keyed_distinct_from_blob_ids_and_counts_holes_as_zeros() -> None:
    master = MasterKey.generate()
    key = master.file_hash_key()
    data = os.urandom(3000)
    assert crypto.file_hash(key, data) != IdHasher(master.id)(data)
    assert crypto.file_hash(key, data) != crypto.file_hash(MasterKey.generate().file_hash_key(), data)
    hasher = crypto.ContentHasher(key)
    hasher.update(data[:1000])
    hasher.zeros_to(5000 + (2 << 20))  # a hole of more than one zero buffer
    hasher.update(data[1000:])
    assert hasher.size == 5000 + (2 << 20) + 2000
    assert hasher.digest() == crypto.file_hash(key, data[:1000] + bytes(4000 + (2 << 20)) + data[1000:])


@pytest.mark.parametrize("name", [b"", b".", b"..", b"../x", b"a/b", b"/", b"nul\0"])
def test_unsafe_names(name: bytes) -> None:
    assert not _node(name).is_safe_name()


def test_safe_names() -> None:
    for name in (b"...", b".hidden", b"\xff", b"L" * 255, b"a\nb", b"..x"):
        assert _node(name).is_safe_name()


def _decoders() -> dict[str, Callable[[bytes], object]]:
    return {
        "tree": tree_fmt.decode_tree,
        "snapshot": snapshot_fmt.Snapshot.decode,
        "index": index_fmt.IndexFile.decode,
        "index (prune's streaming form)": lambda data: BlobTable().add_index_file(data),
        "pack header": pack_fmt.decode_header,
        "lock": lock_fmt.LockInfo.decode,
        "key file": keyfile_fmt.KeyFile.decode,
        "key meta": keyfile_fmt.decode_meta,
        "config header": config_fmt.ConfigHeader.decode,
        "config body": config_fmt.ConfigBody.decode,
        "verify record": verify_fmt.VerifyRecord.decode,
    }


def _valid_encodings() -> dict[str, bytes]:
    entry = PackEntry(DATA, b"b" * 32, 0, 100, 80)
    return {
        "tree": tree_fmt.encode_tree(
            [
                _node(b"f", content=[(0, b"x" * 32)], xattrs=[(b"user.a", b"v")]),
                _node(b"d", type="d", subtree=b"y" * 32),
            ]
        ),
        "snapshot": snapshot_fmt.Snapshot(
            1, "host", "user", ["/a"], b"t" * 32, tags=["x"], parent=b"p" * 32, summary={"n": 1}
        ).encode(),
        "index": index_fmt.IndexFile({b"p" * 32: [entry]}, [b"s" * 32]).encode(),
        "index (prune's streaming form)": index_fmt.IndexFile({b"p" * 32: [entry]}, [b"s" * 32]).encode(),
        "pack header": pack_fmt.encode_header([entry]),
        "lock": lock_fmt.LockInfo(1, False, "h", "u", 2).encode(),
        "key file": keyfile_fmt.KeyFile(
            {"kdf": "argon2id", "ops": 1, "mem": 8192, "salt": b"s" * 16, "nonce": b"n" * 24, "data": b"d"}, b"m"
        ).encode(),
        "key meta": keyfile_fmt.encode_meta("h", "u", 5),
        "config header": config_fmt.ConfigHeader(b"i" * 32, XCHACHA, b"body").encode(),
        "config body": config_fmt.ConfigBody((1024, 4096, 16384), 1 << 24, "lz4").encode(),
        "verify record": _record().encode(),
    }


def _record() -> verify_fmt.VerifyRecord:
    return verify_fmt.VerifyRecord(
        1, 2, "h", "u", "backupfs 1", verify_fmt.RESTORE, 7, False, 3, 4000, 1,
        [verify_fmt.SnapshotTally(b"s" * 32, 3, 4000, 1)], [b"p" * 32], [b"/a\xff: differs"],
    )  # fmt: skip


def test_verify_record_round_trip_and_bounded_problems() -> None:
    record = _record()
    assert verify_fmt.VerifyRecord.decode(record.encode()) == record
    record.problems = [b"/f%d: differs" % i for i in range(150)]
    assert len(verify_fmt.VerifyRecord.decode(record.encode()).problems) == verify_fmt.MAX_PROBLEMS
    other = msgpack.unpackb(record.encode())
    other["later"] = 1  # a key added later: ignored
    assert verify_fmt.VerifyRecord.decode(msgpack.packb(other)).seed == 7


def _mutations(obj: Any) -> list[Any]:
    """Type-confused variants of a decoded msgpack object: every field set to every other kind."""
    weird: list[Any] = [None, True, -1, 2**63, 1.5, "s", b"b", b"\xff" * 40, [], [1, "x"], {}, {"k": [b"v"]}]
    out: list[Any] = []
    if isinstance(obj, dict):
        for key in obj:
            for w in weird:
                out.append({**obj, key: w})
            out.append({k: v for k, v in obj.items() if k != key})
            for sub in _mutations(obj[key])[:40]:
                out.append({**obj, key: sub})
    elif isinstance(obj, list):
        for i in range(len(obj)):
            for w in weird:
                out.append([*obj[:i], w, *obj[i + 1 :]])
            for sub in _mutations(obj[i])[:40]:
                out.append([*obj[:i], sub, *obj[i + 1 :]])
        out.append([*obj, 1])
        out.append(obj[:-1])
    return out


@pytest.mark.parametrize("what", sorted(_decoders()))
def test_decoders_round_trip_and_reject_garbage(what: str) -> None:
    """Truncated, random and type-confused bytes must raise IntegrityError and nothing else."""
    decode = _decoders()[what]
    valid = _valid_encodings()[what]
    decode(valid)  # the valid encoding decodes
    candidates: list[bytes] = [b"", b"\xc1", b"\x81\x91\x01\x02", b"\x81\x81\x01\x02\x02", b"\xa2\xff\xfe"]
    candidates += [valid[:n] for n in range(len(valid))]
    rng = random.Random(what)
    candidates += [rng.randbytes(rng.randrange(1, 200)) for _ in range(300)]
    for i in range(0, len(valid), max(1, len(valid) // 50)):
        flipped = bytearray(valid)
        flipped[i] ^= 0xFF
        candidates.append(bytes(flipped))
    base = msgpack.unpackb(valid, raw=False, strict_map_key=False)
    candidates += [msgpack.packb(m, use_bin_type=True) for m in _mutations(base)]
    for data in candidates:
        try:
            obj = decode(data)
        except IntegrityError:
            continue
        except Exception as exc:
            raise AssertionError(f"{what}: {data!r} raised {type(exc).__name__}: {exc}") from exc
        _assert_well_typed(what, obj)


def _assert_well_typed(what: str, obj: object) -> None:
    """Whatever a decoder accepts must have the types the rest of the code relies on."""
    if what == "tree":
        assert isinstance(obj, list)
        for n in obj:
            assert isinstance(n, tree_fmt.Node)
            for f in ("mode", "uid", "gid", "mtime_ns", "atime_ns", "ctime_ns", "size"):
                v = getattr(n, f)
                assert isinstance(v, int) and not isinstance(v, bool), (f, v)
            for f in ("inode", "device", "nlink", "rdev"):
                v = getattr(n, f)
                assert v is None or (isinstance(v, int) and not isinstance(v, bool)), (f, v)
            for f in ("user", "group"):
                assert getattr(n, f) is None or isinstance(getattr(n, f), str), f
            assert n.link_target is None or isinstance(n.link_target, bytes)
            assert n.xattrs is None or all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in n.xattrs)
            assert n.content is None or all(
                isinstance(o, int) and o >= 0 and isinstance(b, bytes) and len(b) == 32 for o, b in n.content
            )
    elif what == "snapshot":
        assert isinstance(obj, snapshot_fmt.Snapshot)
        assert isinstance(obj.uid, int) and isinstance(obj.gid, int)
        assert all(isinstance(e, str) for e in obj.excludes)
        assert isinstance(obj.summary, dict)
        assert obj.parent is None or len(obj.parent) == 32


def test_snapshot_round_trip() -> None:
    snap = snapshot_fmt.Snapshot(
        time_ns=5, host="h", user="u", paths=["/a", "/b"], tree=b"t" * 32, uid=1, gid=2, tags=["t"],
        parent=b"p" * 32, excludes=["*.tmp"], summary={"files_new": 3}, program="backupfs x",
    )  # fmt: skip
    assert snapshot_fmt.Snapshot.decode(snap.encode()) == snap


def test_index_round_trip() -> None:
    entries = [PackEntry(DATA, bytes([i]) * 32, i * 100, 100, 90) for i in range(5)]
    idx = index_fmt.IndexFile({b"p" * 32: entries, b"q" * 32: entries[:1]}, [b"s" * 32])
    back = index_fmt.IndexFile.decode(idx.encode())
    assert back.packs == idx.packs and back.supersedes == idx.supersedes


def test_pack_header_location() -> None:
    assert pack_fmt.header_location(100, pack_fmt.TRAILER.pack(20)) == (76, 20)
    for size, trailer in ((100, pack_fmt.TRAILER.pack(97)), (100, pack_fmt.TRAILER.pack(0)), (100, b"\x01")):
        with pytest.raises(IntegrityError):
            pack_fmt.header_location(size, trailer)


def test_blob_aad_binds_type_and_id() -> None:
    i = b"i" * 32
    assert len({pack_fmt.blob_aad(DATA, i), pack_fmt.blob_aad(TREE, i), pack_fmt.blob_aad(DATA, b"j" * 32)}) == 3


# --------------------------------------------------------------------------- master index


def test_master_index() -> None:
    mi = MasterIndex()
    a, b = b"a" * 32, b"b" * 32
    mi.add_pack(b"P" * 32, [PackEntry(DATA, a, 0, 10, 8), PackEntry(DATA, b, 10, 20, 18)])
    mi.add_pack(b"Q" * 32, [PackEntry(DATA, a, 0, 11, 8)])  # a second copy (two concurrent backups)
    assert len(mi) == 2 and a in mi and b"c" * 32 not in mi
    loc = mi.lookup(a)
    assert loc is not None and loc.pack_id == b"P" * 32 and (loc.offset, loc.length, loc.raw_length) == (0, 10, 8)
    assert mi.lookup(b"c" * 32) is None
    assert mi.raw_length(b) == 18 and mi.raw_length(b"c" * 32) is None
    assert mi.pack_ids() == {b"P" * 32, b"Q" * 32}
    assert {bid for bid, _ in mi.items()} == {a, b}


def test_master_index_keeps_every_copy() -> None:
    """A blob in several packs keeps each copy, in the order loaded: in the sorted arrays (built
    or compacted, and through the cache's table) and in the overlay; a pack added twice adds
    nothing, so a reader can fall back on another copy when one is damaged."""
    a, b = b"a" * 32, b"b" * 32
    p, q, r = b"P" * 32, b"Q" * 32, b"R" * 32
    built = MasterIndex.build([(p, [PackEntry(DATA, a, 0, 10, 8)]), (q, [PackEntry(DATA, a, 5, 11, 8)])])
    for mi in (built, MasterIndex.from_table(built.to_table())):
        assert [(loc.pack_id, loc.offset) for loc in mi.locations(a)] == [(p, 0), (q, 5)]
        assert mi.lookup(a) is not None and mi.lookup(a).pack_id == p  # type: ignore[union-attr]
        mi.add_pack(r, [PackEntry(DATA, a, 7, 12, 8), PackEntry(DATA, b, 0, 3, 2)])
        mi.add_pack(r, [PackEntry(DATA, a, 7, 12, 8)])  # again: nothing new
        mi.add_pack(q, [PackEntry(DATA, a, 5, 11, 8)])  # a copy it has: nothing new
        assert [loc.pack_id for loc in mi.locations(a)] == [p, q, r]
        mi.compact()
        assert [loc.pack_id for loc in mi.locations(a)] == [p, q, r]
        assert [loc.pack_id for loc in mi.locations(b)] == [r] and mi.locations(b"c" * 32) == []


def test_master_index_fanout_edges() -> None:
    """The fan-out table over 2-byte prefixes finds ids at both ends of the range, runs of one
    prefix, and nothing for absent ids that share a present prefix."""
    rng = random.Random(3)
    prefixes = [b"\x00\x00", b"\x00\x01", b"\x7f\xff", b"\x80\x00", b"\xff\xfe", b"\xff\xff"]
    present = [p + rng.randbytes(30) for p in prefixes for _ in range(3)] + [rng.randbytes(32) for _ in range(500)]
    mi = MasterIndex.build([(b"P" * 32, [PackEntry(DATA, bid, i, 1, 1) for i, bid in enumerate(present)])])
    for i, bid in enumerate(present):
        loc = mi.lookup(bid)
        assert loc is not None and loc.offset == i
    for p in prefixes:
        assert mi.lookup(p + rng.randbytes(30)) is None
    assert mi.lookup(b"\x00" * 32) is None and mi.lookup(b"\xff" * 32) is None
    assert MasterIndex.build([]).lookup(b"\x00" * 32) is None


def test_master_index_concurrent_adds() -> None:
    mi = MasterIndex()

    def add(t: int) -> None:
        for p in range(50):
            mi.add_pack(
                bytes([t, p]) * 16, [PackEntry(DATA, bytes([t, p, i]) + b"\0" * 29, i, 1, 1) for i in range(20)]
            )

    threads = [threading.Thread(target=add, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(mi) == 4 * 50 * 20 and len(mi.pack_ids()) == 200


# --------------------------------------------------------------------------- packer


def test_packer_builds_parseable_packs() -> None:
    cipher = Cipher(XCHACHA, os.urandom(32))
    uploaded: dict[str, tuple[bytes, list[PackEntry]]] = {}
    lock = threading.Lock()

    def upload(name: str, data: bytes, entries: list[PackEntry]) -> None:
        with lock:
            uploaded[name] = (data, entries)

    packer = Packer(cipher, 64 * 1024, upload)
    blobs: dict[bytes, tuple[int, bytes]] = {}
    for i in range(40):
        btype = TREE if i % 4 == 0 else DATA
        plain = rand(5000 + i, i)
        bid = blake3.blake3(plain).digest()
        blobs[bid] = (btype, plain)
        packer.add(btype, bid, cipher.seal(plain, pack_fmt.blob_aad(btype, bid)), len(plain))
    packer.flush()
    packer.close()
    seen: set[bytes] = set()
    for name, (data, entries) in uploaded.items():
        assert blake3.blake3(data).hexdigest() == name  # file id = hash of bytes
        hoff, hlen = pack_fmt.header_location(len(data), data[-4:])
        header = pack_fmt.decode_header(
            comp.decompress(cipher.open(data[hoff : hoff + hlen], pack_fmt.HEADER_AAD), 1 << 20)
        )
        assert header == entries
        assert len({e.type for e in header}) == 1  # one blob type per pack
        for e in header:
            btype, plain = blobs[e.id]
            assert e.type == btype and e.raw_length == len(plain)
            assert cipher.open(data[e.offset : e.offset + e.length], pack_fmt.blob_aad(btype, e.id)) == plain
            seen.add(e.id)
    assert seen == set(blobs)
    assert len(uploaded) >= 3  # the 64 KiB target closed packs along the way


def test_packer_upload_error_propagates() -> None:
    def upload(name: str, data: bytes, entries: list[PackEntry]) -> None:
        raise OSError("disk on fire")

    packer = Packer(Cipher(XCHACHA, os.urandom(32)), 1024, upload)
    with pytest.raises(OSError, match="disk on fire"):
        for i in range(100):
            packer.add(DATA, bytes([i]) * 32, rand(2000, i), 2000)
        packer.flush()
    packer.close()


# --------------------------------------------------------------------------- repository on memory


@pytest.fixture
def mem_repo() -> tuple[MemoryBackend, Repository]:
    backend = MemoryBackend()
    return backend, Repository.init(backend, b"pw", pack_size=1 << 20, kdf=FAST_KDF)


def test_repository_blob_round_trip(mem_repo: tuple[MemoryBackend, Repository]) -> None:
    backend, repo = mem_repo
    data = [rand(300_000, i) for i in range(8)] + [b"compressible " * 10000, b""]
    ids = [repo.save_blob(DATA, d)[0] for d in data]
    assert repo.save_blob(DATA, data[0]) == (ids[0], 0)  # dedup before upload
    tree_id = repo.save_tree([_node(b"x", content=[(0, ids[0])])])
    repo.flush()
    assert repo.save_blob(DATA, data[0]) == (ids[0], 0)  # dedup after upload
    repo.close()
    again = Repository.open(backend, b"pw")
    again.load_index()
    assert [again.load_blob(DATA, i) for i in ids] == data
    assert again.load_tree(tree_id)[0].content == [(0, ids[0])]
    with pytest.raises(WrongPassword):
        Repository.open(backend, b"nope")


def test_trees_are_zstd_and_data_follows_the_repository_setting(mem_repo: tuple[MemoryBackend, Repository]) -> None:
    """Design.md 3: data blobs use the repository's compression (lz4 here), trees zstd."""
    backend, repo = mem_repo
    data_id, _ = repo.save_blob(DATA, b"compressible data " * 1000)
    tree_id = repo.save_tree([_node(b"file %d" % i, content=[(0, data_id)]) for i in range(200)])
    repo.flush()
    for btype, blob_id, algorithm in ((DATA, data_id, comp.LZ4), (TREE, tree_id, comp.ZSTD)):
        loc = repo.index.lookup(blob_id)
        assert loc is not None
        envelope = backend.load(FileType.DATA, loc.pack_id.hex(), loc.offset, loc.length)
        payload = repo.cipher.open(envelope, blob_aad(btype, blob_id))
        assert payload[0] == algorithm
    assert len(repo.load_tree(tree_id)) == 200


def test_load_data_blobs_reads_neighbours_at_once(mem_repo: tuple[MemoryBackend, Repository]) -> None:
    """Blobs of one pack close together come from one ranged read; each result is what loading
    that blob alone gives, errors included (a damaged blob spoils only itself)."""
    backend, repo = mem_repo
    data = [rand(5000 + i, i) for i in range(30)]
    ids = [repo.save_blob(DATA, d)[0] for d in data]
    repo.flush()
    unknown = b"\x01" * 32
    loc = repo.index.lookup(ids[7])
    assert loc is not None
    pack = backend.load(FileType.DATA, loc.pack_id.hex())
    damaged = bytearray(pack)
    damaged[loc.offset + 40] ^= 1
    backend.save(FileType.DATA, loc.pack_id.hex(), bytes(damaged))
    loads: list[tuple[str, int, int | None]] = []
    load = backend.load

    def counting(ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        loads.append((name, offset, length))
        return load(ftype, name, offset, length)

    backend.load = counting  # type: ignore[method-assign]
    wanted = [ids[20], ids[3], unknown, ids[7], ids[4], ids[29]]
    got = repo.load_data_blobs(wanted)
    assert len(loads) == 1  # one pack, all within the gap
    assert got[0] == data[20] and got[1] == data[3] and got[4] == data[4] and got[5] == data[29]
    assert isinstance(got[2], BlobNotIndexed) and got[2].blob_id == unknown and "not in the index" in str(got[2])
    assert isinstance(got[3], IntegrityError) and not isinstance(got[3], PackMissing | BlobNotIndexed)
    loads.clear()
    assert repo.load_data_blobs([ids[0], ids[29]], gap=0) == [data[0], data[29]]
    assert len(loads) == 2  # too far apart for a zero gap


def test_a_missing_pack_and_an_unknown_blob_are_typed_errors(mem_repo: tuple[MemoryBackend, Repository]) -> None:
    """The mount reloads its index on exactly these two (a prune moved the blob, a newer backup
    wrote it), so they are told apart by type, not by what caused them."""
    backend, repo = mem_repo
    blob_id = repo.save_blob(DATA, rand(5000, 1))[0]
    repo.flush()
    loc = repo.index.lookup(blob_id)
    assert loc is not None
    backend.remove(FileType.DATA, loc.pack_id.hex())
    with pytest.raises(PackMissing) as missing:
        repo.load_blob(DATA, blob_id)
    assert missing.value.pack == loc.pack_id.hex() and missing.value.exit_code == 4
    (batch,) = repo.load_data_blobs([blob_id])
    assert isinstance(batch, PackMissing) and batch.pack == loc.pack_id.hex()
    with pytest.raises(BlobNotIndexed) as unknown:
        repo.load_blob(DATA, b"\x02" * 32)
    assert unknown.value.blob_id == b"\x02" * 32 and unknown.value.exit_code == 4


def test_blob_envelope_bound_to_id_and_type(mem_repo: tuple[MemoryBackend, Repository]) -> None:
    """An envelope moved to another id, or read as another type, fails authentication."""
    backend, repo = mem_repo
    a, _ = repo.save_blob(DATA, b"blob a" * 100)
    b, _ = repo.save_blob(DATA, b"blob b" * 100)
    repo.flush()
    loc_a, loc_b = repo.index.lookup(a), repo.index.lookup(b)
    assert loc_a is not None and loc_b is not None
    env_a = backend.load(FileType.DATA, loc_a.pack_id.hex(), loc_a.offset, loc_a.length)
    assert repo.open_blob(DATA, a, env_a) == b"blob a" * 100
    with pytest.raises(IntegrityError):
        repo.open_blob(DATA, b, env_a)  # listed under another id
    with pytest.raises(IntegrityError):
        repo.open_blob(TREE, a, env_a)  # read as another type
    # an index that points b at a's envelope (a forged or confused index) is caught on load
    repo.index.add_pack(b"F" * 32, [])
    forged = MasterIndex()
    forged.add_pack(loc_a.pack_id, [PackEntry(DATA, b, loc_a.offset, loc_a.length, loc_a.raw_length)])
    repo.index = forged
    with pytest.raises(IntegrityError, match=loc_a.pack_id.hex()):
        repo.load_blob(DATA, b)


def test_a_tree_sealed_under_another_id_is_refused(mem_repo: tuple[MemoryBackend, Repository]) -> None:
    """The key's holder can seal any listing for any tree id, e.g. one whose sub-folder is the
    tree itself: a cycle. The keyed id of every blob's plaintext is checked on every load, so
    no reader meets one (format.md 3, architecture.md 1)."""
    _backend, repo = mem_repo
    fine = repo.save_tree([_node(b"x")])
    cycle_id = repo.blob_id(b"the id of another listing")
    forged = tree_fmt.encode_tree([tree_fmt.Node(name=b"loop", type=tree_fmt.DIR, subtree=cycle_id)])
    repo.save_blob(TREE, forged, blob_id=cycle_id)  # sealed for cycle_id, holding other bytes
    repo.flush()
    assert repo.load_tree(fine)[0].name == b"x"
    for load in (repo.load_tree, repo.load_tree_as_stored, lambda tid: repo.load_blob(TREE, tid)):
        with pytest.raises(IntegrityError, match="does not hash to its id"):
            load(cycle_id)


def test_repository_files_bound_to_their_type(mem_repo: tuple[MemoryBackend, Repository]) -> None:
    """A snapshot's bytes stored as an index file (same name: its hash) do not decrypt as an index."""
    backend, repo = mem_repo
    repo.save_blob(DATA, b"x")
    repo.flush()
    sid = repo.save_snapshot(snapshot_fmt.Snapshot(1, "h", "u", ["/"], b"t" * 32))
    backend.save(FileType.INDEX, sid, backend.load(FileType.SNAPSHOT, sid))
    with pytest.raises(IntegrityError, match=sid):
        repo.load_index_file(sid)
    # and the whole-file hash names catch bit rot before any decryption
    data = bytearray(backend.load(FileType.SNAPSHOT, sid))
    data[-1] ^= 1
    backend.save(FileType.SNAPSHOT, sid, bytes(data))
    with pytest.raises(IntegrityError, match=sid):
        repo.load_snapshot(sid)


def test_damaged_key_file_is_not_a_wrong_password(mem_repo: tuple[MemoryBackend, Repository]) -> None:
    backend, _repo = mem_repo
    ((name, _),) = backend.list(FileType.KEY)
    backend.save(FileType.KEY, name, backend.load(FileType.KEY, name)[:-10])
    with pytest.raises(IntegrityError, match=name[:8]) as info:
        Repository.open(backend, b"pw")
    assert not isinstance(info.value, WrongPassword)


def test_one_damaged_key_file_among_several(mem_repo: tuple[MemoryBackend, Repository]) -> None:
    backend, repo = mem_repo
    second = repo.add_key(b"second")
    backend.save(FileType.KEY, second, b"garbage")
    assert Repository.open(backend, b"pw").master == repo.master  # the intact key still opens it
    with pytest.raises(WrongPassword, match=f"keys/{second}"):  # and the damage is mentioned
        Repository.open(backend, b"second")
    keys = {k.name: k for k in repo.list_keys()}
    assert keys[second].user == "(damaged)" and keys[repo.key_name].current
    repo.remove_key(second[:8])
    assert [k.name for k in repo.list_keys()] == [repo.key_name]


def test_key_management(mem_repo: tuple[MemoryBackend, Repository]) -> None:
    backend, repo = mem_repo
    second = repo.add_key(b"second")
    assert Repository.open(backend, b"second").master == repo.master
    assert {k.name for k in repo.list_keys()} == {repo.key_name, second}
    for ref in (repo.key_name, repo.key_name[:8], ""):
        with pytest.raises(UsageError):
            repo.remove_key(ref)
    assert len(list(backend.list(FileType.KEY))) == 2
    repo.remove_key(second[:10])
    with pytest.raises(WrongPassword):
        Repository.open(backend, b"second")
    repo.change_password(b"third")
    with pytest.raises(WrongPassword):
        Repository.open(backend, b"pw")
    assert Repository.open(backend, b"third").master == repo.master


def test_repositories_do_not_share_ids() -> None:
    r1 = Repository.init(MemoryBackend(), b"pw", kdf=FAST_KDF)
    r2 = Repository.init(MemoryBackend(), b"pw", kdf=FAST_KDF)
    assert r1.blob_id(b"same file") != r2.blob_id(b"same file")
    assert r1.master.chunker_seed() != r2.master.chunker_seed()


def test_packer_fails_fast_after_one_upload_failed_for_good() -> None:
    """Queued packs are not uploaded (each with its own retries) once one upload has failed."""
    calls: list[str] = []
    gate = threading.Event()

    def upload(name: str, data: bytes, entries: object) -> None:
        calls.append(name)
        gate.wait(5)
        raise BackendError("server gone")

    packer = Packer(Cipher(XCHACHA, bytes(32)), 1024, upload, uploaders=1, max_in_flight=8)
    for i in range(5):
        packer.add(0, bytes([i]) * 32, bytes(2048), 2048)
    gate.set()
    with pytest.raises(BackendError):
        packer.flush()
    packer.close()
    assert len(calls) == 1


def test_sole_error_finds_the_one_error_inside_nested_groups() -> None:
    """What ended a trio loop (the mount's, the server's) is reported as itself, on one line."""
    inner = UsageError("port in use")
    assert sole_error(BaseExceptionGroup("a", [BaseExceptionGroup("b", [inner])])) is inner
    two = BaseExceptionGroup("a", [inner, BaseExceptionGroup("b", [KeyboardInterrupt()])])
    assert sole_error(two) is two
