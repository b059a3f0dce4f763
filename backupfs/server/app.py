"""The ASGI application: authentication, routing and the append-only rules over the storage."""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final

import blake3
import trio

from backupfs.backends.base import FileType
from backupfs.errors import UsageError
from backupfs.server.auth import Htpasswd, basic_credentials
from backupfs.server.ratelimit import LoginLimiter
from backupfs.server.routes import parse_target
from backupfs.server.storage import (
    READ_CHUNK,
    Read,
    Refused,
    Upload,
    create_repository,
    file_path,
    open_listing,
    open_read,
    pread,
    remove_file,
)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_UPLOAD: Final = (1 << 30) + (64 << 20)  # the largest pack (1 GiB, format.md 7) plus its header
WRITE_CHUNK: Final = 1 << 20
# A refused upload is read (and dropped) up to this size, so the client sees the answer rather
# than a reset and its kept-alive connection stays usable. Larger ones are answered at once and
# the connection closed: reading gigabytes to refuse them is what an attacker would want.
MAX_DRAIN: Final = 64 << 20
IO_THREADS: Final = 16  # blocking file work at once
LIST_BATCH: Final = 10_000  # listing entries per piece sent (~0.9 MB of JSON)
AUTH_THREADS: Final = 2  # bcrypt checks at once: CPU-bound, so a burst of logins cannot starve the I/O
JSON_V2: Final = b"application/vnd.x.restic.rest.v2"
APPEND_ONLY_HEADER: Final = b"x-backupfs-append-only"


class _ClientGone(Exception):
    pass


class RestApp:
    """The ASGI application; one instance serves every repository under `root`."""

    def __init__(
        self,
        root: str,
        *,
        append_only: bool = False,
        htpasswd: Htpasswd | None = None,
        private_repos: bool = False,
        io_threads: int = IO_THREADS,
        list_batch: int = LIST_BATCH,
        logins: LoginLimiter | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if private_repos and htpasswd is None:
            raise UsageError("--private-repos needs --htpasswd (users must be known)")
        self.root = os.path.abspath(root)
        self.append_only = append_only
        self.htpasswd = htpasswd
        self.private_repos = private_repos
        self._io = trio.CapacityLimiter(io_threads)
        self._list_batch = list_batch
        self._auth = trio.CapacityLimiter(AUTH_THREADS)  # bcrypt: kept off the I/O threads
        self.logins = logins if logins is not None else LoginLimiter()
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
        except (Refused, OSError) as exc:
            if started:  # too late for a status: dropping the connection tells the client
                raise
            close = False
            if not body_done:
                close = not _worth_draining(exc, headers)
                if not close:
                    try:
                        await _drain(tracking_receive, MAX_DRAIN)
                    except Refused:
                        close = True
                    except _ClientGone:
                        pass
            await self._error_response(scope, exc, tracking_send, close)
        except _ClientGone:
            pass

    async def _error_response(self, scope: Scope, exc: Exception, send: Send, close: bool) -> None:
        # the body left unread makes the connection unusable: say so, and hypercorn closes it
        extra = [(b"connection", b"close")] if close else []
        if isinstance(exc, Refused):
            await _respond(send, exc.status, exc.reason.encode() + b"\n", [*exc.headers, *extra])
            return
        assert isinstance(exc, OSError)
        self._log(f"{scope['method']} {scope.get('path')}: {exc}")
        status = 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 500  # 507: not worth retrying
        await _respond(send, status, f"server storage error: {exc.strerror or exc}\n".encode(), extra)

    async def _handle(self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        user = await self._authenticate(scope, headers)
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        raw_path = raw_path.split(b"?", 1)[0]
        target = parse_target(raw_path)
        if target is None:
            raise Refused(400, "invalid path")
        if self.private_repos and (not target.repo or target.repo[0] != user):
            raise Refused(403, f"user {user} may only use repositories under /{user}/")
        repo_dir = os.path.join(self.root, *target.repo)
        if target.kind == "repo":
            query = scope.get("query_string", b"")
            if method == "POST" and b"create=true" in query.split(b"&"):
                await self._run(create_repository, repo_dir)
                await _respond(send, 200)
                return
            raise Refused(405, "only POST ?create=true is supported on a repository path", _allow(b"POST"))
        if target.kind == "list":
            if method not in ("GET", "HEAD"):
                raise Refused(405, "a folder can only be listed", _allow(b"GET, HEAD"))
            assert target.ftype is not None
            await self._list(repo_dir, target.ftype, send, head=method == "HEAD")
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
            raise Refused(405, f"method {method} is not supported", _allow(b"GET, HEAD, POST, DELETE"))

    async def _authenticate(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        """The user, once the credentials are verified.

        A login verified before is answered from the cache, here on the event loop, never
        queued behind the bcrypt checks of others; only the others take a failed-login token
        of their address (given back on success) and then a bcrypt thread.
        """
        htpasswd = self.htpasswd
        if htpasswd is None:
            return ""
        creds = basic_credentials(headers)
        challenge = [(b"www-authenticate", b'Basic realm="backupfs"')]
        if creds is None:
            raise Refused(401, "authentication required", challenge)
        user, password = creds
        if htpasswd.reload_due() and await self._run(htpasswd.refresh):
            for warning in htpasswd.warnings:
                self._log(f"warning: {warning}")
        if htpasswd.verified(user, password):
            return user
        client = scope.get("client")
        address = str(client[0]) if client else None
        wait = self.logins.take(address)
        if wait > 0:
            retry = str(max(1, math.ceil(wait))).encode()
            raise Refused(429, "too many failed logins from this address; try again later", [(b"retry-after", retry)])
        if not await trio.to_thread.run_sync(htpasswd.check, user, password, limiter=self._auth):
            raise Refused(401, "wrong user name or password", challenge)
        self.logins.give_back(address)
        return user

    async def _list(self, repo_dir: str, ftype: FileType, send: Send, head: bool) -> None:
        """Streams the listing (chunked, no length): memory bounded by one piece, not the folder."""
        pieces: Generator[bytes, None, None] = await self._run(open_listing, repo_dir, ftype, self._list_batch)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", JSON_V2)]})
            while not head and (piece := await self._run(next, pieces, None)) is not None:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            pieces.close()  # gives back the folder's descriptor if the client left mid-way

    async def _load(self, path: str, headers: dict[bytes, bytes], send: Send, head: bool) -> None:
        read: Read = await self._run(open_read, path, headers.get(b"range"), head)
        try:
            await send({"type": "http.response.start", "status": read.status, "headers": read.headers})
            await send({"type": "http.response.body", "body": read.first, "more_body": read.fd >= 0})
            while read.fd >= 0 and read.pos < read.end:
                data = await self._run(pread, read.fd, min(READ_CHUNK, read.end - read.pos), read.pos)
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
            raise Refused(413, "upload too large")
        # config is written once (init); in append-only mode nothing but locks is ever replaced
        protected = ftype is FileType.CONFIG or (self.append_only and ftype is not FileType.LOCK)
        upload: Upload | None = await self._run(Upload.start, repo_dir, path, name, protected)
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
                    raise Refused(413, "upload too large")
                if pending_size >= WRITE_CHUNK:
                    await self._run(upload.write, b"".join(pending))
                    pending, pending_size = [], 0
            if pending:
                await self._run(upload.write, b"".join(pending))
            expected = None if ftype is FileType.CONFIG else name
            committed = await self._run(upload.commit, path, expected, not protected)
            if not committed and ftype is FileType.CONFIG:
                raise Refused(409, "config already exists")
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
                raise Refused(413, "upload too large")
            hasher.update(chunk)
        if ftype is FileType.CONFIG:
            raise Refused(409, "config already exists")
        if hasher.hexdigest() != name:
            raise Refused(403, f"append-only: {ftype.value}/{name} exists and cannot be overwritten")

    async def _delete(self, path: str, ftype: FileType, send: Send) -> None:
        if self.append_only and ftype is not FileType.LOCK:
            raise Refused(403, f"append-only: deleting {ftype.value} files is not allowed (run prune on the server)")
        await self._run(remove_file, path)
        await _respond(send, 200)


def _worth_draining(exc: Exception, headers: dict[bytes, bytes]) -> bool:
    """Whether to read an unread request body before answering (else the connection closes)."""
    if isinstance(exc, Refused) and exc.status == 413:
        return False
    declared = headers.get(b"content-length")
    return declared is None or (declared.isdigit() and int(declared) <= MAX_DRAIN)


def _allow(methods: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"allow", methods)]


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
            raise Refused(413, "too much to drain")


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


