"""`serve --htpasswd`: Apache htpasswd files and HTTP basic credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from typing import Final

import bcrypt

from backupfs.errors import UsageError

VERIFIED_SECONDS: Final = 300.0  # a successful password check is trusted this long
RELOAD_CHECK_SECONDS: Final = 1.0  # the file's modification time is looked at at most this often
# bcrypt cost of the check made for unknown users, so that a failed login takes time either way
_DUMMY_ROUNDS: Final = 10
_CACHE_KEY_BYTES: Final = 32


class HtpasswdError(UsageError):
    """The --htpasswd file cannot be used at start-up: unreadable, or no entry in it is usable."""


class Htpasswd:
    """An Apache htpasswd file: bcrypt (`$2y$`, `htpasswd -B`), `$apr1$` (its default) or `{SHA}`.

    bcrypt costs ~0.1 s per check by design, far too slow for every request of a backup, so a
    successful check is remembered (as an HMAC under a per-process key, never the password) for
    `cache_seconds`. The file is re-read when its modification time changes, so users can be
    added or revoked without a restart.
    """

    def __init__(self, path: str, cache_seconds: float = VERIFIED_SECONDS) -> None:
        self.path = path
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(_CACHE_KEY_BYTES)
        self._entries: dict[str, bytes] = {}
        self._verified: dict[str, tuple[bytes, float]] = {}
        self._mtime = -1.0
        self._checked = 0.0
        self._dummy = bcrypt.hashpw(b"dummy", bcrypt.gensalt(rounds=_DUMMY_ROUNDS))
        self.warnings: list[str] = []
        self._reload(force=True)
        if not self._entries:
            raise HtpasswdError(
                f"--htpasswd {path}: no usable entry (lines must be USER:HASH, hashes bcrypt, $apr1$ or {{SHA}})"
            )

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_CHECK_SECONDS:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
            if not force and st.st_mtime == self._mtime:
                return
            with open(self.path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError as exc:
            if force:
                raise HtpasswdError(f"cannot read --htpasswd {self.path}: {exc.strerror or exc}") from exc
            return  # keep the last good user list while the file is being replaced
        entries: dict[str, bytes] = {}
        warnings = []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user:
                warnings.append(f"{self.path}:{lineno}: malformed line ignored")
            elif hashed.startswith(("$2y$", "$2b$", "$2a$", "$apr1$", "{SHA}")):
                entries[user] = hashed.encode()
            else:
                warnings.append(f"{self.path}:{lineno}: unsupported hash for user {user!r} (use htpasswd -B)")
        with self._lock:
            self._entries = entries
            self._verified.clear()
            self._mtime = st.st_mtime
            self.warnings = warnings

    def check(self, user: str, password: bytes) -> bool:
        """Blocking (bcrypt): call from a worker thread."""
        self._reload()
        tag = hmac.new(self._secret, user.encode() + b"\0" + password, hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            hashed = self._entries.get(user)
            cached = self._verified.get(user)
        if hashed is None:
            bcrypt.checkpw(password, self._dummy)  # same cost as a real check: do not reveal user names
            return False
        if cached is not None and cached[1] > now and hmac.compare_digest(cached[0], tag):
            return True
        if hashed.startswith(b"{SHA}"):
            ok = hmac.compare_digest(base64.b64encode(hashlib.sha1(password).digest()), hashed[5:])
        elif hashed.startswith(b"$apr1$"):
            ok = hmac.compare_digest(apr1_md5(password, hashed.split(b"$")[2]), hashed)
        else:
            try:
                ok = bcrypt.checkpw(password, hashed)
            except ValueError:
                ok = False
        if ok:
            with self._lock:
                if self._entries.get(user) == hashed:
                    self._verified[user] = (tag, now + self._cache_seconds)
        return ok


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

