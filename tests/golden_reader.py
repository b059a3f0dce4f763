"""A second reader of backupfs repositories (format version 1), written from docs/format.md alone.

It imports nothing of backupfs: msgpack, BLAKE3, libsodium's AEADs through PyNaCl, the reference
Argon2 (argon2-cffi, so that the spec's "libsodium with one lane" is checked against another
implementation), zstd, and its own LZ4 block decoder from the byte layout the spec gives.
tests/test_golden.py runs it on tests/golden_repo and compares what it finds with `Repository`.
Every check fails with `Damaged`; nothing here is lenient, since the golden repository is made
by backupfs itself.
"""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any

import blake3
import msgpack
import nacl.bindings as nb
import zstandard
from argon2.low_level import Type, hash_secret_raw

# suite -> nonce size, tag size, decrypt(ciphertext, aad, nonce, key)   (format.md 3)
SUITES = {
    "aegis256": (32, 32, nb.crypto_aead_aegis256_decrypt),
    "xchacha20poly1305": (24, 16, nb.crypto_aead_xchacha20poly1305_ietf_decrypt),
}
ARGON2_VERSION = 0x13
DATA, TREE = 0, 1
TYPE_BYTE = {DATA: b"D", TREE: b"T"}
FOLDERS = ("keys", "index", "snapshots", "locks")


class Damaged(Exception):
    pass


def need(ok: object, what: str) -> None:
    if not ok:
        raise Damaged(what)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def lz4_block(src: bytes, size: int) -> bytes:
    """The LZ4 Block Format: token (literals << 4 | match - 4), lengths of 15 extended by bytes
    until one is below 255, literals, a 2-byte little-endian offset; the last sequence is literals."""
    out = bytearray()
    i = 0

    def length(n: int) -> int:
        nonlocal i
        if n == 15:
            while True:
                b = src[i]
                i += 1
                n += b
                if b != 255:
                    break
        return n

    while True:
        token = src[i]
        i += 1
        n = length(token >> 4)
        out += src[i : i + n]
        i += n
        if i == len(src):
            break
        offset = src[i] | src[i + 1] << 8
        i += 2
        need(0 < offset <= len(out), "lz4 offset")
        start = len(out) - offset
        for k in range(length(token & 15) + 4):  # the match may overlap what it copies
            out.append(out[start + k])
    need(len(out) == size, "lz4 size")
    return bytes(out)


class Reader:
    def __init__(self, root: Path, password: bytes) -> None:
        self.root = root
        self.compressions: collections.Counter[tuple[str, int]] = collections.Counter()
        self.files = self._files_by_name()
        header = unpack(self.file("config"))
        need(header["magic"] == "backupfs" and header["v"] == 1, "config magic and version")
        self.repo_id: bytes = header["id"]
        self.aead: str = header["aead"]
        need(len(self.repo_id) == 32 and self.aead in SUITES, "config id and aead")
        self.master = self._unwrap(password)
        body = unpack(self.open(header["body"], b"bfs1C" + self.repo_id, "config"))
        self.chunker, self.pack_size, self.compression = body["chunker"], body["pack_size"], body["compression"]
        self.blobs = self._index()
        self._check_packs()
        self.snapshots = {name: self._snapshot(name) for name in self.names("snapshots")}
        self.locks = [unpack(self.open(self.file("locks", n), b"bfs1L", "lock")) for n in self.names("locks")]

    # ---------------------------------------------------------------- files and envelopes

    def _files_by_name(self) -> dict[tuple[str, str], bytes]:
        """Every file, its name checked: the unkeyed BLAKE3 of its bytes, in its folder."""
        out = {}
        for path in self.root.rglob("*"):
            if not path.is_file() or path.name == "config":
                continue
            rel = path.relative_to(self.root).parts
            data = path.read_bytes()
            need(blake3.blake3(data).hexdigest() == path.name, f"{path} is not named by its hash")
            if rel[0] == "data":
                need(len(rel) == 3 and rel[1] == path.name[:2], f"{path} in the wrong folder")
            else:
                need(len(rel) == 2 and rel[0] in FOLDERS, f"{path} is not a repository file")
            out[(rel[0], path.name)] = data
        return out

    def file(self, folder: str, name: str = "") -> bytes:
        return (self.root / "config").read_bytes() if folder == "config" else self.files[(folder, name)]

    def names(self, folder: str) -> list[str]:
        return sorted(n for f, n in self.files if f == folder)

    def open(self, envelope: bytes, aad: bytes, kind: str, limit: int = 16 << 20) -> bytes:
        """An envelope: nonce || ciphertext || tag, its payload one compression byte and a body."""
        nonce_size, tag_size, decrypt = SUITES[self.aead]
        need(len(envelope) >= nonce_size + tag_size, "short envelope")
        payload = decrypt(envelope[nonce_size:], aad, envelope[:nonce_size], self.master["enc"])
        algorithm, body = payload[0], payload[1:]
        self.compressions[(kind, algorithm)] += 1
        if algorithm == 0:
            return bytes(body)
        if algorithm == 1:
            size = int.from_bytes(body[:4], "little")
            need(size <= limit, "lz4 bomb")
            return lz4_block(body[4:], size)
        need(algorithm == 2, f"compression {algorithm}")
        declared = zstandard.frame_content_size(body)
        need(0 <= declared <= limit, "zstd frame without its size")
        out = zstandard.ZstdDecompressor().decompress(body)
        need(len(out) == declared, "zstd size")
        return out

    def _unwrap(self, password: bytes) -> dict[str, bytes]:
        """The master key from the first key file the password opens (format.md 4)."""
        for name in self.names("keys"):
            kf = unpack(self.file("keys", name))
            need(kf["v"] == 1 and kf["kdf"] == "argon2id", "key file version and kdf")
            wrapping = hash_secret_raw(
                password,
                kf["salt"],
                time_cost=kf["ops"],
                memory_cost=kf["mem"] // 1024,
                parallelism=1,
                hash_len=32,
                type=Type.ID,
                version=ARGON2_VERSION,
            )
            try:
                plain = nb.crypto_aead_xchacha20poly1305_ietf_decrypt(
                    kf["data"], b"bfs1K" + self.repo_id, kf["nonce"], wrapping
                )
            except Exception:
                continue
            master: dict[str, bytes] = unpack(plain)
            need(list(master) == ["enc", "id", "chunker"], "master key keys")
            need(all(len(v) == 32 for v in master.values()), "master key lengths")
            self.master = master
            self.key_meta = unpack(self.open(kf["meta"], b"bfs1M", "key meta"))
            return master
        raise Damaged("no key file opens with this password")

    # ---------------------------------------------------------------- index and packs

    def _index(self) -> dict[bytes, tuple[int, str, int, int, int]]:
        """blob id -> type, pack, offset, length, raw length, from every index file in force."""
        files = {n: unpack(self.open(self.file("index", n), b"bfs1I", "index")) for n in self.names("index")}
        superseded = {bytes(s).hex() for f in files.values() for s in f.get("supersedes", [])}
        blobs = {}
        for name, idx in files.items():
            need(set(idx) <= {"packs", "supersedes"}, "index keys")
            if name in superseded:
                continue
            for pack_id, entries in idx["packs"]:
                for btype, blob_id, offset, length, raw in entries:
                    blobs[blob_id] = (btype, pack_id.hex(), offset, length, raw)
        return blobs

    def _check_packs(self) -> None:
        """Each pack's own header lists what the index says it holds, before the header."""
        listed = collections.defaultdict(set)
        for blob_id, (btype, pack, offset, length, raw) in self.blobs.items():
            listed[pack].add((btype, blob_id, offset, length, raw))
        need(set(listed) == set(self.names("data")), "packs and index disagree")
        for pack, entries in listed.items():
            data = self.file("data", pack)
            hlen = int.from_bytes(data[-4:], "little")
            header = unpack(self.open(data[-4 - hlen : -4], b"bfs1H", "pack header"))
            need({tuple(e) for e in header} == entries, f"pack {pack} header")
            need(all(o + n <= len(data) - 4 - hlen for _, _, o, n, _ in entries), "blob past the header")
            need(len({t for t, *_ in entries}) == 1, "a pack of one blob type")

    def blob(self, btype: int, blob_id: bytes) -> bytes:
        t, pack, offset, length, raw = self.blobs[blob_id]
        need(t == btype, "blob type")
        envelope = self.file("data", pack)[offset : offset + length]
        kind = "tree" if btype == TREE else "data"
        plain = self.open(envelope, b"bfs1" + TYPE_BYTE[btype] + blob_id, kind, limit=raw)
        need(len(plain) == raw, "raw length")
        need(blake3.blake3(plain, key=self.master["id"]).digest() == blob_id, "blob id")
        return plain

    # ---------------------------------------------------------------- snapshots and trees

    def _snapshot(self, name: str) -> dict[str, Any]:
        snap: dict[str, Any] = unpack(self.open(self.file("snapshots", name), b"bfs1S", "snapshot"))
        need({"time", "host", "user", "paths", "tree"} <= set(snap), "snapshot keys")
        snap["entries"] = {}
        self._walk(snap["tree"], b"", snap["entries"])
        return snap

    def _walk(self, tree_id: bytes, path: bytes, out: dict[bytes, dict[str, Any]]) -> None:
        tree = unpack(self.blob(TREE, tree_id))
        need(tree["v"] == 1 and set(tree) == {"v", "entries"}, "tree layout")
        names = [node["n"] for node in tree["entries"]]
        need(names == sorted(names) and len(set(names)) == len(names), "entries sorted by name, once each")
        for node in tree["entries"]:
            need(node["t"] in ("f", "d", "l", "p", "c", "b"), "node type")
            here = path + b"/" + node["n"]
            out[here] = node
            if node["t"] == "d":
                self._walk(node["st"], here, out)
            elif node["t"] == "f":
                node["data"] = self._content(node)

    def _content(self, node: dict[str, Any]) -> bytes:
        """Each chunk at its offset, up to the next one's offset (or the size); gaps are holes."""
        size, chunks = node["s"], node.get("c", [])
        out = bytearray(size)
        offsets = [off for off, _ in chunks]
        need(offsets == sorted(set(offsets)) and all(o < size for o in offsets), "chunk offsets")
        for k, (off, blob_id) in enumerate(chunks):
            end = offsets[k + 1] if k + 1 < len(chunks) else size
            data = self.blob(DATA, blob_id)[: end - off]
            out[off : off + len(data)] = data
        return bytes(out)



# ---------------------------------------------------------------- chunking (format.md 6)

GEAR_BLAKE3 = "9af822d1e10df25d0157a43ccd0a73b56d1c1d0a5d77acb4e6e979522d0fe149"
MASKS = dict(  # k -> the mask of k one bits
    enumerate(
        [
            *(0x1804110, 0x1803110, 0x18035100, 0x1800035300, 0x19000353000, 0x590003530000, 0xD90003530000),
            *(0xD90103530000, 0xD90303530000, 0xD90313530000, 0xD90F03530000, 0xD90303537000, 0xD90703537000),
            *(0xD90707537000, 0xD91707537000, 0xD91747537000, 0xD91767537000, 0xD93767537000, 0xD93777537000),
            *(0xD93777577000, 0xDB3777577000),
        ],
        start=5,
    )
)
U64 = (1 << 64) - 1


def chunker_seed(chunker_secret: bytes) -> int:
    digest = blake3.blake3(b"bfs1 chunker seed", key=chunker_secret).digest()
    return (int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)) | 1


def cut(buf: bytes, params: tuple[int, int, int], seed: int, gear: list[int]) -> list[int]:
    """The lengths of the chunks a buffer is cut into."""
    lo, avg, hi = params
    need(blake3.blake3(b"".join(g.to_bytes(8, "little") for g in gear)).hexdigest() == GEAR_BLAKE3, "gear")
    g = [x ^ seed for x in gear]
    bits = math.floor(math.log2(avg) + 0.5)
    mask_s, mask_l = MASKS[bits + 1], MASKS[bits - 1]
    if len(buf) <= lo:
        return [len(buf)] if buf else []
    out: list[int] = []
    pos = 0
    while pos < len(buf):
        b = memoryview(buf)[pos:]
        n = len(b)
        length = n
        if n > lo:
            end = min(n, hi)
            center = min(avg, end)
            h = 0
            for i in range(2 * (lo // 2), 2 * (end // 2)):
                h = (2 * h + g[b[i]]) & U64
                if not h & (mask_s if i < 2 * (center // 2) else mask_l):
                    length = i  # the byte just hashed starts the next chunk
                    break
            else:
                length = end
        out.append(length)
        pos += length
    return out
