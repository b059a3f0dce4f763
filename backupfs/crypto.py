"""Keys, keyed ids and the AEAD envelope (format.md sections 3-4). Pure: no I/O besides urandom."""

from __future__ import annotations

import dataclasses
import os
from typing import Final

import blake3
import msgpack
import nacl.bindings as nb
import nacl.exceptions

from backupfs.errors import IntegrityError, WrongPassword

AEGIS256: Final = "aegis256"
XCHACHA: Final = "xchacha20poly1305"
SUITES: Final = (AEGIS256, XCHACHA)

KEY_SIZE: Final = 32  # the AEAD key, the blob id key and the chunker secret, each
SALT_SIZE: Final = 16  # Argon2id salt of a key file
SEED_BITS: Final = 63  # pyfastcdc shifts the chunker seed left by one: 64 bits would overflow
# Above this size BLAKE3 hashes a file with several threads; below, starting them costs more.
PARALLEL_HASH_MIN: Final = 4 << 20
FILE_HASH_CONTEXT: Final = b"bfs1 file hash"  # derives the whole-file hash key from the id key
_ZEROS: Final = bytes(1 << 20)  # a hole's bytes, fed to a file hash a MiB at a time

ARGON2_OPS: Final = 3
ARGON2_MEM: Final = 64 * 1024 * 1024
# What a key file may ask for (format.md 4). Anyone who can write to the storage can add a key
# file, and every command pays its cost before it tries the next one: the ceiling keeps one
# hostile file to ~10 s and 1 GiB, not the minutes and 8 GiB libsodium would accept.
ARGON2_OPS_RANGE: Final = (1, 10)
ARGON2_MEM_RANGE: Final = (8 * 1024, 1024 * 1024 * 1024)  # libsodium's minimum, bytes


def default_suite() -> str:
    """AEGIS-256 is 3-5x faster here; fall back where libsodium lacks it."""
    return AEGIS256 if hasattr(nb, "crypto_aead_aegis256_encrypt") else XCHACHA


def file_id(data: bytes | memoryview) -> str:
    """Unkeyed name of a repository file: anyone can detect bit rot by re-hashing."""
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO if len(data) > PARALLEL_HASH_MIN else 1).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class MasterKey:
    enc: bytes
    id: bytes
    chunker: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_SIZE), os.urandom(KEY_SIZE), os.urandom(KEY_SIZE))

    def to_bytes(self) -> bytes:
        return bytes(msgpack.packb({"enc": self.enc, "id": self.id, "chunker": self.chunker}, use_bin_type=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> MasterKey:
        try:
            obj = msgpack.unpackb(data, raw=False)
            key = cls(bytes(obj["enc"]), bytes(obj["id"]), bytes(obj["chunker"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError("master key is malformed") from exc
        if any(len(k) != KEY_SIZE for k in (key.enc, key.id, key.chunker)):
            raise IntegrityError("master key has wrong lengths")
        return key

    def file_hash_key(self) -> bytes:
        """The key of whole-file hashes (format.md 9 `fh`): derived, so that a file hash can never
        be taken for (or tested against) a blob id of the same bytes."""
        return blake3.blake3(FILE_HASH_CONTEXT, key=self.id).digest()

    def chunker_seed(self) -> int:
        """63-bit odd seed for pyfastcdc's gear table (it shifts the seed left, so 64 bits overflow)."""
        digest = blake3.blake3(b"bfs1 chunker seed", key=self.chunker).digest()
        return (int.from_bytes(digest[:8], "little") & ((1 << SEED_BITS) - 1)) | 1


class Cipher:
    """Seals and opens envelopes: nonce || ciphertext+tag. Thread-safe (no mutable state)."""

    def __init__(self, suite: str, key: bytes) -> None:
        if suite == AEGIS256:
            self._enc = nb.crypto_aead_aegis256_encrypt
            self._dec = nb.crypto_aead_aegis256_decrypt
            self.nonce_size = nb.crypto_aead_aegis256_NPUBBYTES
            self.tag_size = nb.crypto_aead_aegis256_ABYTES
        elif suite == XCHACHA:
            self._enc = nb.crypto_aead_xchacha20poly1305_ietf_encrypt
            self._dec = nb.crypto_aead_xchacha20poly1305_ietf_decrypt
            self.nonce_size = nb.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
            self.tag_size = nb.crypto_aead_xchacha20poly1305_ietf_ABYTES
        else:
            raise IntegrityError(f"unknown AEAD suite {suite!r}")
        if len(key) != KEY_SIZE:
            raise ValueError("AEAD key must be 32 bytes")
        self.suite = suite
        self._key = key

    @property
    def overhead(self) -> int:
        return self.nonce_size + self.tag_size

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(self.nonce_size)
        return nonce + self._enc(
            bytes(plaintext) if isinstance(plaintext, memoryview) else plaintext, aad, nonce, self._key
        )

    def open(self, envelope: bytes | memoryview, aad: bytes) -> bytes:
        if len(envelope) < self.overhead:
            raise IntegrityError("encrypted object is truncated")
        view = memoryview(envelope)
        nonce = bytes(view[: self.nonce_size])
        try:
            return self._dec(bytes(view[self.nonce_size :]), aad, nonce, self._key)
        except nacl.exceptions.CryptoError as exc:
            raise IntegrityError("authentication failed: data is corrupt or was tampered with") from exc


class IdHasher:
    """Keyed BLAKE3 blob ids; the key keeps the provider from confirming known content."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._key).digest()


class ContentHasher:
    """The keyed hash of one file's whole content, fed in file order: what a restore of it gives,
    holes as zero bytes. BLAKE3 releases the GIL on large inputs, so it runs in file threads."""

    __slots__ = ("_h", "size")

    def __init__(self, key: bytes) -> None:
        self._h = blake3.blake3(key=key)
        self.size = 0  # bytes fed so far

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def zeros_to(self, offset: int) -> None:
        """Feeds zero bytes up to `offset` (a hole); nothing when already there."""
        while self.size < offset:
            n = min(offset - self.size, len(_ZEROS))
            self.update(memoryview(_ZEROS)[:n])

    def digest(self) -> bytes:
        return self._h.digest()


def file_hash(key: bytes, data: bytes | memoryview) -> bytes:
    """The whole-file hash of `data` in one call."""
    return blake3.blake3(data, key=key).digest()


def derive_wrapping_key(password: bytes, salt: bytes, ops: int, mem: int) -> bytes:
    return nb.crypto_pwhash_alg(KEY_SIZE, password, salt, ops, mem, nb.crypto_pwhash_ALG_ARGON2ID13)


def _kdf_in_range(ops: int, mem: int) -> bool:
    return ARGON2_OPS_RANGE[0] <= ops <= ARGON2_OPS_RANGE[1] and ARGON2_MEM_RANGE[0] <= mem <= ARGON2_MEM_RANGE[1]


def kdf_cost(fields: dict[str, object]) -> int:
    """What trying this key file costs (passes x memory), checked before anything is derived:
    an unknown KDF or parameters outside the accepted range are an IntegrityError."""
    ops, mem = fields.get("ops"), fields.get("mem")
    if fields.get("kdf") != "argon2id" or type(ops) is not int or type(mem) is not int:
        raise IntegrityError("key file has an unsupported KDF")
    if not _kdf_in_range(ops, mem):
        raise IntegrityError(
            f"key file asks for Argon2id with {ops} passes over {mem} bytes, outside the accepted "
            f"{ARGON2_OPS_RANGE[0]}-{ARGON2_OPS_RANGE[1]} passes and "
            f"{ARGON2_MEM_RANGE[0] >> 10} KiB-{ARGON2_MEM_RANGE[1] >> 30} GiB"
        )
    return ops * mem


def wrap_master_key(
    master: MasterKey, password: bytes, aad: bytes, ops: int = ARGON2_OPS, mem: int = ARGON2_MEM
) -> dict[str, object]:
    if not _kdf_in_range(ops, mem):
        raise ValueError(f"Argon2id parameters {ops}, {mem} are outside the range a reader accepts")
    salt = os.urandom(SALT_SIZE)
    wrapping = Cipher(XCHACHA, derive_wrapping_key(password, salt, ops, mem))
    sealed = wrapping.seal(master.to_bytes(), aad)
    return {
        "kdf": "argon2id",
        "ops": ops,
        "mem": mem,
        "salt": salt,
        "nonce": sealed[: wrapping.nonce_size],
        "data": sealed[wrapping.nonce_size :],
    }


def unwrap_master_key(fields: dict[str, object], password: bytes, aad: bytes) -> MasterKey:
    """Key files are plaintext anyone with write access can edit: every field is checked first."""
    salt, nonce, data = fields.get("salt"), fields.get("nonce"), fields.get("data")
    if (
        not isinstance(salt, bytes)
        or len(salt) != SALT_SIZE
        or not isinstance(nonce, bytes)
        or len(nonce) != nb.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
        or not isinstance(data, bytes)
    ):
        raise IntegrityError("key file is malformed")
    kdf_cost(fields)
    ops, mem = fields["ops"], fields["mem"]
    assert isinstance(ops, int) and isinstance(mem, int)
    wrapping = Cipher(XCHACHA, derive_wrapping_key(password, salt, ops, mem))
    try:
        plain = wrapping.open(nonce + data, aad)
    except IntegrityError as exc:
        raise WrongPassword("wrong password or no key found") from exc
    return MasterKey.from_bytes(plain)
