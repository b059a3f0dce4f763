"""`serve --htpasswd`: Apache htpasswd files and HTTP basic credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import Final

import bcrypt

from backupfs.errors import UsageError

VERIFIED_SECONDS: Final = 300.0  # a successful password check is trusted this long
MAX_VERIFIED: Final = 1024  # remembered successful logins; the oldest is forgotten first
RELOAD_CHECK_SECONDS: Final = 1.0  # the file's modification time is looked at at most this often
# bcrypt uses only a password's first 72 bytes (Apache's htpasswd -B too); the bcrypt module
# refuses longer ones instead of truncating
BCRYPT_MAX_PASSWORD: Final = 72
# what `htpasswd -B` writes without -C: the cost of the unknown-user check in a file without bcrypt
DEFAULT_BCRYPT_COST: Final = 5
BCRYPT_MIN_COST: Final = 4  # the range bcrypt itself accepts
BCRYPT_MAX_COST: Final = 31
_BCRYPT_PREFIXES: Final = ("$2y$", "$2b$", "$2a$")
_BCRYPT_CHECKSUM_CHARS: Final = 31
_CACHE_KEY_BYTES: Final = 32


class HtpasswdError(UsageError):
    """The --htpasswd file cannot be used at start-up: unreadable, or no entry in it is usable."""


class Htpasswd:
    """An Apache htpasswd file: bcrypt (`$2y$`, `htpasswd -B`), `$apr1$` (its default) or `{SHA}`.

    bcrypt costs up to ~0.1 s per check by design, far too slow for every request of a backup,
    so a successful check is remembered for `cache_seconds`, keyed by an HMAC of user and
    password under a per-process key: never the password itself. `verified()` answers from that
    cache without any hashing worth the name, so a logged-in client never waits for the bcrypt
    checks of others. The file is re-read when it changes (`reload`), which forgets every
    remembered login, so users can be added or revoked without a restart.
    """

    def __init__(
        self,
        path: str,
        cache_seconds: float = VERIFIED_SECONDS,
        reload_seconds: float = RELOAD_CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._cache_seconds = cache_seconds
        self._reload_seconds = reload_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(_CACHE_KEY_BYTES)
        self._entries: dict[str, bytes] = {}
        # HMAC(user, password) -> (user, the file's hash it was checked against, expiry)
        self._verified: OrderedDict[bytes, tuple[str, bytes, float]] = OrderedDict()
        self._signature: tuple[int, int, int] | None = None
        self._checked = clock()
        self._dummy: Callable[[bytes], object] = _bcrypt_dummy(DEFAULT_BCRYPT_COST)
        self.warnings: list[str] = []
        try:
            self.reload()
        except OSError as exc:
            raise HtpasswdError(f"cannot read --htpasswd {path}: {exc.strerror or exc}") from exc
        if not self._entries:
            raise HtpasswdError(
                f"--htpasswd {path}: no usable entry (lines must be USER:HASH, hashes bcrypt, $apr1$ or {{SHA}})"
            )

    def reload_due(self) -> bool:
        """Whether to look at the file again; True once per interval (call from the event loop)."""
        now = self._clock()
        if now - self._checked < self._reload_seconds:
            return False
        self._checked = now
        return True

    def reload(self) -> bool:
        """Re-reads the file if it changed (True then). Blocking: call from a worker thread."""
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            if signature == self._signature:
                return False
            text = f.read().decode("utf-8", "replace")
        entries: dict[str, bytes] = {}
        warnings = []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user:
                warnings.append(f"{self.path}:{lineno}: malformed line ignored")
            elif hashed.startswith((*_BCRYPT_PREFIXES, "$apr1$", "{SHA}")):
                entries[user] = hashed.encode()
            else:
                warnings.append(f"{self.path}:{lineno}: unsupported hash for user {user!r} (use htpasswd -B)")
        dummy = _dummy_check(entries.values())
        with self._lock:
            self._entries = entries
            self._verified.clear()
            self._signature = signature
            self._dummy = dummy
            self.warnings = warnings
        return True

    def refresh(self) -> bool:
        """`reload`, keeping the last good user list while the file cannot be read (it is being
        replaced, say). Blocking."""
        try:
            return self.reload()
        except OSError:
            return False

    def _tag(self, user: str, password: bytes) -> bytes:
        return hmac.new(self._secret, user.encode() + b"\0" + password, hashlib.sha256).digest()

    def verified(self, user: str, password: bytes) -> bool:
        """Whether this login succeeded recently (and the file has not changed since). Cheap: one
        HMAC-SHA256, no I/O, so it is called on the event loop, ahead of the bcrypt queue."""
        tag = self._tag(user, password)
        with self._lock:
            cached = self._verified.get(tag)
            if cached is None:
                return False
            cached_user, hashed, expiry = cached
            if cached_user == user and expiry > self._clock() and self._entries.get(user) == hashed:
                return True
            del self._verified[tag]
            return False

    def check(self, user: str, password: bytes) -> bool:
        """The full check (bcrypt): blocking and slow, call from a worker thread.

        An unknown user costs the same work as a known one: the dummy check uses the scheme and
        bcrypt cost of the file's own entries, so timing does not tell which user names exist.
        """
        with self._lock:
            hashed = self._entries.get(user)
            dummy = self._dummy
        if hashed is None:
            dummy(password)
            return False
        ok = verify_hash(password, hashed)
        if ok:
            with self._lock:
                if self._entries.get(user) == hashed:  # not replaced by a reload meanwhile
                    self._verified[self._tag(user, password)] = (user, hashed, self._clock() + self._cache_seconds)
                    while len(self._verified) > MAX_VERIFIED:
                        self._verified.popitem(last=False)
        return ok


def verify_hash(password: bytes, hashed: bytes) -> bool:
    """Whether `password` matches one htpasswd hash (bcrypt, $apr1$ or {SHA}). Blocking."""
    if hashed.startswith(b"{SHA}"):
        return hmac.compare_digest(base64.b64encode(hashlib.sha1(password).digest()), hashed[5:])
    if hashed.startswith(b"$apr1$"):
        return hmac.compare_digest(apr1_md5(password, hashed.split(b"$")[2]), hashed)
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], hashed)
    except ValueError:  # a malformed hash in the file
        return False


def bcrypt_cost(hashed: bytes) -> int | None:
    """The cost (log2 rounds) of a bcrypt hash, None if it is not one."""
    parts = hashed.split(b"$")
    if len(parts) < 4 or not hashed.startswith(tuple(p.encode() for p in _BCRYPT_PREFIXES)):
        return None
    if not (parts[2].isdigit() and len(parts[2]) == 2):
        return None
    cost = int(parts[2])
    return cost if BCRYPT_MIN_COST <= cost <= BCRYPT_MAX_COST else None


def _dummy_check(hashes: Iterable[bytes]) -> Callable[[bytes], object]:
    """The work an unknown user's login costs: that of the file's most common kind of entry
    (for bcrypt, its most common cost; the higher one on a tie)."""
    kinds: Counter[tuple[str, int]] = Counter()
    for hashed in hashes:
        cost = bcrypt_cost(hashed)
        if cost is not None:
            kinds["bcrypt", cost] += 1
        elif hashed.startswith(b"$apr1$"):
            kinds["apr1", 0] += 1
        else:
            kinds["sha", 0] += 1
    if not kinds:
        return _bcrypt_dummy(DEFAULT_BCRYPT_COST)
    (kind, cost), _n = max(kinds.items(), key=lambda item: (item[1], item[0][1]))
    if kind == "bcrypt":
        return _bcrypt_dummy(cost)
    if kind == "apr1":
        salt = secrets.token_hex(4).encode()
        return lambda password: apr1_md5(password, salt)
    return lambda password: hashlib.sha1(password).digest()


def _bcrypt_dummy(cost: int) -> Callable[[bytes], object]:
    """A bcrypt check of this cost that no password passes. gensalt() does no hashing, so even a
    high cost costs nothing here; the checksum is random, so nothing can match it."""
    alphabet = _ITOA64.decode()
    checksum = "".join(secrets.choice(alphabet) for _ in range(_BCRYPT_CHECKSUM_CHARS)).encode()
    hashed = bcrypt.gensalt(rounds=cost) + checksum
    return lambda password: verify_hash(password, hashed)


_ITOA64: Final = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def apr1_md5(password: bytes, salt: bytes) -> bytes:
    """Apache's "$apr1$" MD5-crypt, what `htpasswd` writes without -B: weak, but the default there."""
    magic = b"$apr1$"
    salt = salt[:8]
    alternate = hashlib.md5(password + salt + password).digest()
    ctx = password + magic + salt
    for n in range(len(password), 0, -16):
        ctx += alternate[: min(16, n)]
    n = len(password)
    while n:
        ctx += b"\0" if n & 1 else password[:1]
        n >>= 1
    digest = hashlib.md5(ctx).digest()
    for i in range(1000):  # the rounds are the algorithm's, chosen in 1994 to be slow then
        block = password if i & 1 else digest
        if i % 3:
            block += salt
        if i % 7:
            block += password
        block += digest if i & 1 else password
        digest = hashlib.md5(block).digest()
    out = bytearray()
    groups = ((0, 6, 12, 4), (1, 7, 13, 4), (2, 8, 14, 4), (3, 9, 15, 4), (4, 10, 5, 4), (None, None, 11, 2))
    for a, b, c, chars in groups:
        value = (digest[a] << 16 if a is not None else 0) | (digest[b] << 8 if b is not None else 0) | digest[c]
        for _ in range(chars):
            out.append(_ITOA64[value & 0x3F])
            value >>= 6
    return magic + salt + b"$" + bytes(out)


def basic_credentials(headers: dict[bytes, bytes]) -> tuple[str, bytes] | None:
    value = headers.get(b"authorization", b"")
    scheme, _, encoded = value.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:
        return None
    user, sep, password = decoded.partition(b":")
    if not sep or not user:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None

