"""`backupfs serve`: repository directories over HTTP for `rest:` clients (docs/server.md).

An ASGI app served by hypercorn on trio. The API follows restic's REST backend protocol; the
directory layout is exactly the local backend's (design.md 2), so a repository can be served,
backed up to, and pruned on the server side interchangeably.

Safety properties, each enforced here and not trusted to the client:

- Paths are validated on their raw bytes: no percent-escapes, no `.`/`..` or empty segments, only
  known file types and 64-hex file names. Nothing a client sends can name a file outside the
  repository layout.
- Every upload is streamed to a temporary file, fsynced, and must hash (unkeyed BLAKE3) to its
  name before it is renamed into place, so a truncated or altered upload never lands.
- `--append-only`: nothing but lock files can be deleted or replaced; `config` can only be
  written while absent. Re-uploading an existing file with identical content (a retried request)
  succeeds without touching it.
- `--htpasswd`: every request needs valid HTTP basic credentials; `--private-repos` confines a
  user to paths under `/<user>/`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import hmac
import json
import os
import re
import secrets
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import bcrypt
import blake3
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.errors import AlreadyExists, BackupfsError, UsageError

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TYPES: Final = {t.value: t for t in FileType if t is not FileType.CONFIG}
RESERVED: Final = frozenset({*TYPES, "config"})
_RAW_PATH = re.compile(rb"/[A-Za-z0-9._/-]*")
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_NAME = re.compile(r"[0-9a-f]{64}")
MAX_REPO_DEPTH: Final = 8
MAX_UPLOAD: Final = (1 << 30) + (64 << 20)  # the largest pack (1 GiB, design.md 7) plus its header
WRITE_CHUNK: Final = 1 << 20
MAX_DRAIN: Final = 64 << 20  # a refused upload is read (and dropped) up to this size
READ_CHUNK: Final = 4 << 20  # most blob reads are one piece: one thread hop
_TMP_MARK: Final = ".tmp-"
JSON_V2: Final = b"application/vnd.x.restic.rest.v2"
APPEND_ONLY_HEADER: Final = b"x-backupfs-append-only"


# ---------------------------------------------------------------------------- authentication


class Htpasswd:
    """An Apache htpasswd file: bcrypt (`$2y$`, `htpasswd -B`), `$apr1$` (its default) or `{SHA}`.

    bcrypt costs ~0.1 s per check by design, far too slow for every request of a backup, so a
    successful check is remembered (as an HMAC under a per-process key, never the password) for
    `cache_seconds`. The file is re-read when its modification time changes, so users can be
    added or revoked without a restart.
    """

    def __init__(self, path: str, cache_seconds: float = 300.0) -> None:
        self.path = path
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(32)
        self._entries: dict[str, bytes] = {}
        self._verified: dict[str, tuple[bytes, float]] = {}
        self._mtime = -1.0
        self._checked = 0.0
        self._dummy = bcrypt.hashpw(b"dummy", bcrypt.gensalt(rounds=10))
        self.warnings: list[str] = []
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
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
                raise BackupfsError(f"cannot read htpasswd file {self.path}: {exc.strerror}") from exc
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


def _basic_credentials(headers: dict[bytes, bytes]) -> tuple[str, bytes] | None:
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


# ---------------------------------------------------------------------------- request targets


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What a request path names: a repository, its config, a type folder, or one file."""

    repo: tuple[str, ...]
    kind: str  # "repo", "config", "list", "file"
    ftype: FileType | None = None
    name: str = ""


def parse_target(raw_path: bytes) -> Target | None:
    """Strict on purpose: anything that is not plainly one of the API's forms is refused."""
    if not _RAW_PATH.fullmatch(raw_path) or len(raw_path) > 1024:
        return None
    parts = raw_path.decode("ascii")[1:].split("/")
    last = parts.pop()
    target: Target | None
    if last == "":
        if parts and parts[-1] in TYPES:
            ftype = TYPES[parts.pop()]
            target = Target(tuple(parts), "list", ftype)
        else:
            target = Target(tuple(parts), "repo")
    elif last == "config":
        target = Target(tuple(parts), "config", FileType.CONFIG, "config")
    elif parts and parts[-1] in TYPES and _NAME.fullmatch(last):
        ftype = TYPES[parts.pop()]
        target = Target(tuple(parts), "file", ftype, last)
    else:
        return None
    if len(target.repo) > MAX_REPO_DEPTH:
        return None
    for seg in target.repo:
        if seg in RESERVED or not _SEGMENT.fullmatch(seg):
            return None
    return target


def file_path(repo_dir: str, ftype: FileType, name: str) -> str:
    """The local backend's layout (design.md 2): data packs fan out by their first two digits."""
    if ftype is FileType.CONFIG:
        return os.path.join(repo_dir, "config")
    if ftype is FileType.DATA:
        return os.path.join(repo_dir, ftype.value, name[:2], name)
    return os.path.join(repo_dir, ftype.value, name)


def parse_range(value: bytes, size: int) -> tuple[int, int] | str | None:
    """One `bytes=` range -> (start, end exclusive); None if unsatisfiable; "bad" if malformed."""
    m = re.fullmatch(rb"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if m is None or (not m[1] and not m[2]):
        return "bad"
    if not m[1]:
        suffix = int(m[2])
        return (max(0, size - suffix), size) if suffix else None
    start = int(m[1])
    end = min(size, int(m[2]) + 1) if m[2] else size
    if m[2] and int(m[2]) < start:
        return "bad"
    return (start, end) if start < size else None


# ---------------------------------------------------------------------------- blocking file work


class _Refused(Exception):
    """Ends a request early with a status and a one-line reason."""

    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


class _ClientGone(Exception):
    pass


class _Upload:
    """A temporary file next to the target, hashed as it is written. Used from worker threads."""

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.tmp = os.path.join(directory, f".{name}{_TMP_MARK}{os.getpid()}-{time.monotonic_ns()}")
        os.makedirs(directory, exist_ok=True)
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.hasher = blake3.blake3(max_threads=1)
        self.size = 0
        self.done = False

    @classmethod
    def start(cls, repo_dir: str, path: str, name: str, protected: bool) -> _Upload | None:
        """A new upload; None if `path` exists and must not be replaced. One thread hop."""
        if not os.path.isdir(repo_dir):
            raise _Refused(404, "no repository at this path")
        if protected and os.path.exists(path):
            return None
        return cls(os.path.dirname(path), name)

    def write(self, data: bytes) -> None:
        self.hasher.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)

    def commit(self, path: str, name: str | None, replace: bool) -> bool:
        """fsync, check the content hashes to `name`, move into place, fsync the directory.

        Without `replace` the file is linked (atomic, never replaces: safe against racing
        writers) and False means `path` already existed.
        """
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1
        if name is not None and self.hasher.hexdigest() != name:
            raise _Refused(400, f"content does not hash to its name ({self.size} bytes received); not stored")
        try:
            if replace:
                os.replace(self.tmp, path)
            else:
                os.link(self.tmp, path)
                os.unlink(self.tmp)
        except FileExistsError:
            os.unlink(self.tmp)
            return False
        finally:
            self.done = True
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


@dataclasses.dataclass(slots=True)
class _Read:
    """The answer to a GET or HEAD: status, headers and the first (often only) piece of data."""

    status: int
    headers: list[tuple[bytes, bytes]]
    first: bytes
    pos: int  # file offset after `first`
    end: int
    fd: int  # still open when more pieces follow, else -1


def _open_read(path: str, range_header: bytes | None, head: bool) -> _Read:
    """Opens, sizes and reads the first piece in one thread hop: most requests are one piece."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, IsADirectoryError):
        raise _Refused(404, "not found") from None
    try:
        size = os.fstat(fd).st_size
        start, end, status = 0, size, 200
        headers = [(b"content-type", b"application/octet-stream"), (b"accept-ranges", b"bytes")]
        if range_header is not None:
            rng = parse_range(range_header, size)
            if rng == "bad":
                raise _Refused(400, "malformed Range header")
            if rng is None:
                raise _Refused(416, "range not satisfiable", [(b"content-range", f"bytes */{size}".encode())])
            assert isinstance(rng, tuple)
            start, end = rng
            status = 206
            headers.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))
        headers.append((b"content-length", str(end - start).encode()))
        first = b"" if head else _pread(fd, min(READ_CHUNK, end - start), start)
        pos = start + len(first)
        if head or pos >= end:
            os.close(fd)
            fd = -1
        return _Read(status, headers, first, pos, end, fd)
    except BaseException:
        os.close(fd)
        raise


def _pread(fd: int, n: int, pos: int) -> bytes:
    data = os.pread(fd, n, pos)
    if len(data) != n:
        raise OSError(errno.EIO, "file shrank while being read")
    return data


def _list(repo_dir: str, ftype: FileType) -> list[dict[str, object]]:
    if not os.path.isdir(repo_dir):
        raise _Refused(404, "no repository at this path")
    return [{"name": n, "size": s} for n, s in LocalBackend(repo_dir).list(ftype)]


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise _Refused(404, "not found") from None


# ---------------------------------------------------------------------------- the app


class RestApp:
    """The ASGI application; one instance serves every repository under `root`."""

    def __init__(
        self,
        root: str,
        *,
        append_only: bool = False,
        htpasswd: Htpasswd | None = None,
        private_repos: bool = False,
        io_threads: int = 16,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if private_repos and htpasswd is None:
            raise UsageError("--private-repos needs --htpasswd (users must be known)")
        self.root = os.path.abspath(root)
        self.append_only = append_only
        self.htpasswd = htpasswd
        self.private_repos = private_repos
        self._io = trio.CapacityLimiter(io_threads)
        self._auth = trio.CapacityLimiter(2)  # bcrypt is CPU-bound: keep it off the I/O threads
        self._log = log or (lambda _m: None)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._io)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        started = False
        body_done = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and self.append_only:
                # lets clients (prune) know up front instead of failing half-way
                message = {**message, "headers": [*message["headers"], (APPEND_ONLY_HEADER, b"1")]}
            started = True
            await send(message)

        async def tracking_receive() -> Message:
            nonlocal body_done
            message = await receive()
            body_done = message["type"] == "http.disconnect" or not message.get("more_body", False)
            return message

        try:
            await self._handle(scope, headers, tracking_receive, tracking_send)
        except (_Refused, OSError) as exc:
            if started:  # too late for a status: dropping the connection tells the client
                raise
            if not body_done:
                # Read what the client is still sending, so it sees our answer rather than a reset
                # and the kept-alive connection stays usable. Beyond a limit, let it close instead.
                with contextlib.suppress(_ClientGone, _Refused):
                    await _drain(tracking_receive, MAX_DRAIN)
            await self._error_response(scope, exc, tracking_send)
        except _ClientGone:
            pass

    async def _error_response(self, scope: Scope, exc: Exception, send: Send) -> None:
        if isinstance(exc, _Refused):
            await _respond(send, exc.status, exc.reason.encode() + b"\n", exc.headers)
            return
        assert isinstance(exc, OSError)
        self._log(f"{scope['method']} {scope.get('path')}: {exc}")
        status = 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 500  # 507: not worth retrying
        await _respond(send, status, f"server storage error: {exc.strerror or exc}\n".encode())

    async def _handle(self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        user = await self._authenticate(headers)
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        raw_path = raw_path.split(b"?", 1)[0]
        target = parse_target(raw_path)
        if target is None:
            raise _Refused(400, "invalid path")
        if self.private_repos and (not target.repo or target.repo[0] != user):
            raise _Refused(403, f"user {user} may only use repositories under /{user}/")
        repo_dir = os.path.join(self.root, *target.repo)
        if target.kind == "repo":
            query = scope.get("query_string", b"")
            if method == "POST" and b"create=true" in query.split(b"&"):
                await self._run(_create, repo_dir)
                await _respond(send, 200)
                return
            raise _Refused(405, "only POST ?create=true is supported on a repository path", _allow(b"POST"))
        if target.kind == "list":
            if method not in ("GET", "HEAD"):
                raise _Refused(405, "a folder can only be listed", _allow(b"GET, HEAD"))
            assert target.ftype is not None
            body = json.dumps(await self._run(_list, repo_dir, target.ftype)).encode()
            await _respond(send, 200, body, [(b"content-type", JSON_V2)], head=method == "HEAD")
            return
        assert target.ftype is not None
        path = file_path(repo_dir, target.ftype, target.name)
        if method in ("GET", "HEAD"):
            await self._load(path, headers, send, head=method == "HEAD")
        elif method == "POST":
            await self._save(repo_dir, path, target.ftype, target.name, headers, receive, send)
        elif method == "DELETE":
            await self._delete(path, target.ftype, send)
        else:
            raise _Refused(405, f"method {method} is not supported", _allow(b"GET, HEAD, POST, DELETE"))

    async def _authenticate(self, headers: dict[bytes, bytes]) -> str:
        if self.htpasswd is None:
            return ""
        creds = _basic_credentials(headers)
        challenge = [(b"www-authenticate", b'Basic realm="backupfs"')]
        if creds is None:
            raise _Refused(401, "authentication required", challenge)
        ok = await trio.to_thread.run_sync(self.htpasswd.check, creds[0], creds[1], limiter=self._auth)
        if not ok:
            raise _Refused(401, "wrong user name or password", challenge)
        return creds[0]

    async def _load(self, path: str, headers: dict[bytes, bytes], send: Send, head: bool) -> None:
        read: _Read = await self._run(_open_read, path, headers.get(b"range"), head)
        try:
            await send({"type": "http.response.start", "status": read.status, "headers": read.headers})
            await send({"type": "http.response.body", "body": read.first, "more_body": read.fd >= 0})
            while read.fd >= 0 and read.pos < read.end:
                data = await self._run(_pread, read.fd, min(READ_CHUNK, read.end - read.pos), read.pos)
                read.pos += len(data)
                await send({"type": "http.response.body", "body": data, "more_body": read.pos < read.end})
        finally:
            if read.fd >= 0:
                os.close(read.fd)  # closing a regular file does not block

    async def _save(
        self,
        repo_dir: str,
        path: str,
        ftype: FileType,
        name: str,
        headers: dict[bytes, bytes],
        receive: Receive,
        send: Send,
    ) -> None:
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_UPLOAD):
            raise _Refused(413, "upload too large")
        # config is written once (init); in append-only mode nothing but locks is ever replaced
        protected = ftype is FileType.CONFIG or (self.append_only and ftype is not FileType.LOCK)
        upload: _Upload | None = await self._run(_Upload.start, repo_dir, path, name, protected)
        if upload is None:
            await self._refuse_existing(ftype, name, receive)
            await _respond(send, 200, b"already stored\n")
            return
        try:
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in _body(receive):
                pending.append(chunk)
                pending_size += len(chunk)
                if upload.size + pending_size > MAX_UPLOAD:
                    raise _Refused(413, "upload too large")
                if pending_size >= WRITE_CHUNK:
                    await self._run(upload.write, b"".join(pending))
                    pending, pending_size = [], 0
            if pending:
                await self._run(upload.write, b"".join(pending))
            expected = None if ftype is FileType.CONFIG else name
            committed = await self._run(upload.commit, path, expected, not protected)
            if not committed and ftype is FileType.CONFIG:
                raise _Refused(409, "config already exists")
            # not committed otherwise: a concurrent upload of this name won; same name, same content
        finally:
            if not upload.done or upload.fd >= 0:
                with trio.CancelScope(shield=True):
                    await self._run(upload.discard)
        await _respond(send, 200)

    async def _refuse_existing(self, ftype: FileType, name: str, receive: Receive) -> None:
        """Reads the body (so the client sees the answer, not a reset) and refuses unless identical."""
        hasher = blake3.blake3(max_threads=1)
        size = 0
        async for chunk in _body(receive):
            size += len(chunk)
            if size > MAX_UPLOAD:
                raise _Refused(413, "upload too large")
            hasher.update(chunk)
        if ftype is FileType.CONFIG:
            raise _Refused(409, "config already exists")
        if hasher.hexdigest() != name:
            raise _Refused(403, f"append-only: {ftype.value}/{name} exists and cannot be overwritten")

    async def _delete(self, path: str, ftype: FileType, send: Send) -> None:
        if self.append_only and ftype is not FileType.LOCK:
            raise _Refused(403, f"append-only: deleting {ftype.value} files is not allowed (run prune on the server)")
        await self._run(_remove, path)
        await _respond(send, 200)


def _allow(methods: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"allow", methods)]


def _create(repo_dir: str) -> None:
    """Creates the layout (idempotent, as restic's protocol asks); an existing repo is untouched."""
    backend = LocalBackend(repo_dir)
    with contextlib.suppress(AlreadyExists):
        backend.create()


async def _body(receive: Receive) -> Any:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


async def _drain(receive: Receive, limit: int) -> None:
    size = 0
    async for chunk in _body(receive):
        size += len(chunk)
        if size > limit:
            raise _Refused(413, "too much to drain")


async def _respond(
    send: Send, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None, head: bool = False
) -> None:
    all_headers = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    if not any(k == b"content-type" for k, _ in all_headers):
        all_headers.append((b"content-type", b"text/plain; charset=utf-8"))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# ---------------------------------------------------------------------------- running


@dataclasses.dataclass
class ServerOptions:
    path: str
    listen: str = "127.0.0.1:8000"
    append_only: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    htpasswd: str | None = None
    private_repos: bool = False


def _hypercorn_config(opts: ServerOptions) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [opts.listen]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.keep_alive_timeout = 120  # clients keep pooled connections through long CPU stretches
    config.read_timeout = 120  # a client silent this long mid-request is gone: free its upload
    config.graceful_timeout = 5
    config.include_server_header = False
    if opts.tls_cert or opts.tls_key:
        if not (opts.tls_cert and opts.tls_key):
            raise UsageError("--tls-cert and --tls-key go together")
        config.certfile, config.keyfile = opts.tls_cert, opts.tls_key
    return config


def build_app(opts: ServerOptions, log: Callable[[str], None]) -> RestApp:
    if not os.path.isdir(opts.path):
        raise UsageError(f"--path {opts.path}: not a directory")
    htpasswd = Htpasswd(opts.htpasswd) if opts.htpasswd else None
    for warning in htpasswd.warnings if htpasswd else []:
        log(f"warning: {warning}")
    return RestApp(
        opts.path, append_only=opts.append_only, htpasswd=htpasswd, private_repos=opts.private_repos, log=log
    )


async def serve(opts: ServerOptions, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> None:
    """Serves until SIGINT or SIGTERM, then finishes running requests (up to 5 s) and returns."""
    app = build_app(opts, log)
    config = _hypercorn_config(opts)
    if config.ssl_enabled:
        try:
            config.create_ssl_context()
        except (OSError, ValueError) as exc:
            reason = "not a matching PEM certificate and key"
            if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.strerror:
                reason = exc.strerror
            raise UsageError(f"cannot load --tls-cert {opts.tls_cert} / --tls-key {opts.tls_key}: {reason}") from exc
    if opts.htpasswd is None and not opts.listen.startswith(("127.", "localhost:", "[::1]:")):
        log("warning: serving without --htpasswd: anyone who can connect can read and write")

    with trio.open_signal_receiver(2, 15) as signals:  # SIGINT, SIGTERM

        async def shutdown_trigger() -> None:
            async for _sig in signals:
                return

        async with trio.open_nursery() as nursery:
            try:
                binds = await nursery.start(
                    lambda task_status: hypercorn_serve(
                        app,  # type: ignore[arg-type]
                        config,
                        shutdown_trigger=shutdown_trigger,
                        task_status=task_status,
                    )
                )
            except OSError as exc:
                raise BackupfsError(f"cannot listen on {opts.listen}: {exc.strerror or exc}") from exc
            mode = " (append-only)" if opts.append_only else ""
            log(f"backupfs: serving {app.root} on {', '.join(binds)}{mode}")
