"""A repository behind `backupfs serve` (or any server speaking restic's REST protocol, v2 lists).

URL: `rest:http[s]://[user:password@]host:port/path/`. Credentials in the URL win over
BACKUPFS_REST_USERNAME / BACKUPFS_REST_PASSWORD; BACKUPFS_REST_CACERT names a CA bundle for a
server with a self-signed certificate.

One pooled `httpx.Client` serves every thread (it is thread-safe): the backup and restore
pipelines keep several requests in flight over kept-alive connections.
"""

from __future__ import annotations

import os
import re
import ssl
import urllib.parse
from collections.abc import Iterator
from typing import Final

import httpx

from backupfs.backends.base import FileType
from backupfs.errors import AlreadyExists, BackendError, NotFound, TransientBackendError, UsageError

_ACCEPT_V2: Final = "application/vnd.x.restic.rest.v2"
_NAME: Final = re.compile(r"[0-9a-f]{64}")
_TRANSIENT_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})


class RestBackend:
    """The Backend protocol over HTTP; see backupfs/server.py for the server side."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        connections: int = 16,
        timeout: float = 120.0,
        cacert: str | None = None,
    ) -> None:
        if url.startswith("rest:"):
            url = url[len("rest:") :]
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise UsageError(f"invalid rest URL {url!r}: expected rest:http(s)://host:port/path")
        user = urllib.parse.unquote(parsed.username) if parsed.username else None
        user = user or username or os.environ.get("BACKUPFS_REST_USERNAME")
        secret = urllib.parse.unquote(parsed.password) if parsed.password else None
        secret = secret or password or os.environ.get("BACKUPFS_REST_PASSWORD")
        path = parsed.path if parsed.path.endswith("/") else parsed.path + "/"
        self._base = parsed.copy_with(username=None, password=None, path=path, query=None, fragment=None)
        self._location = "rest:" + str(self._base)
        cacert = cacert or os.environ.get("BACKUPFS_REST_CACERT")
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=cacert) if cacert else True
        self._client = httpx.Client(
            auth=httpx.BasicAuth(user, secret or "") if user else None,
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=15.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            headers={"accept": _ACCEPT_V2},
            follow_redirects=False,
        )
        # set once any answer of a `backupfs serve --append-only` says so (prune can refuse early)
        self.append_only = False

    @property
    def location(self) -> str:
        return self._location

    # ------------------------------------------------------------------ plumbing

    def _file_url(self, ftype: FileType, name: str) -> httpx.URL | None:
        """None for a name no repository file can have (the server only stores file ids)."""
        if ftype is FileType.CONFIG:
            return self._base.join("config")
        if not _NAME.fullmatch(name):
            return None
        return self._base.join(f"{ftype.value}/{name}")

    def _existing(self, ftype: FileType, name: str) -> httpx.URL:
        url = self._file_url(ftype, name)
        if url is None:
            raise NotFound(f"{ftype.value}/{name}: not found")
        return url

    def _request(
        self,
        method: str,
        url: httpx.URL,
        what: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        allow: tuple[int, ...] = (),
    ) -> httpx.Response:
        """Sends one request; maps failures to the Backend errors. Statuses in `allow` are returned."""
        try:
            response = self._client.request(method, url, content=content, headers=headers, params=params)
        except httpx.TimeoutException as exc:
            raise TransientBackendError(f"{self._location}: {what}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            if isinstance(_root_cause(exc), ssl.SSLError):  # a bad certificate does not heal by retrying
                raise BackendError(f"{self._location}: {what}: TLS failed: {_describe(exc)}") from exc
            raise TransientBackendError(f"{self._location}: {what}: {_describe(exc)}") from exc
        if response.headers.get("x-backupfs-append-only") == "1":
            self.append_only = True
        if response.status_code < 300 or response.status_code in allow:
            return response
        reason = response.text.strip().splitlines()[0][:200] if response.text.strip() else response.reason_phrase
        if response.status_code == 404:
            raise NotFound(f"{what}: not found")
        if response.status_code == 401:
            raise BackendError(f"{self._location}: authentication failed ({reason}); check user name and password")
        message = f"{self._location}: {what}: server answered {response.status_code} ({reason})"
        if response.status_code in _TRANSIENT_STATUS:
            raise TransientBackendError(message)
        raise BackendError(message)

    # ------------------------------------------------------------------ the Backend protocol

    def exists(self) -> bool:
        try:
            self._request("HEAD", self._existing(FileType.CONFIG, "config"), "config")
        except NotFound:
            return False
        return True

    def create(self) -> None:
        if self.exists():
            raise AlreadyExists(f"a repository already exists at {self._location}")
        self._request("POST", self._base, "create repository", params={"create": "true"})

    def save(self, ftype: FileType, name: str, data: bytes | memoryview) -> None:
        what = f"save {ftype.value}/{name}"
        body = data if isinstance(data, bytes) else bytes(data)
        allow = (409,) if ftype is FileType.CONFIG else ()
        url = self._file_url(ftype, name)
        if url is None:
            raise BackendError(f"invalid file name {name!r}")
        if self._request("POST", url, what, content=body, allow=allow).status_code == 409:
            raise AlreadyExists(f"{self._location}: config already exists")

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        what = f"{ftype.value}/{name}"
        if length == 0:
            self.stat(ftype, name)
            return b""
        headers = None
        if length is not None:
            headers = {"range": f"bytes={offset}-{offset + length - 1}"}
        elif offset:
            headers = {"range": f"bytes={offset}-"}
        response = self._request("GET", self._existing(ftype, name), what, headers=headers, allow=(416,))
        if response.status_code == 416:  # the range starts at or after the end of the file
            if length is None:
                return b""  # like reading a local file from its end
            raise BackendError(f"{what}: short read (0 of {length} bytes at {offset})")
        data = response.content
        if response.status_code == 200 and offset:
            data = data[offset:]  # a server that ignores Range sends the whole file
        if length is not None:
            data = data[:length] if response.status_code == 200 else data
            if len(data) != length:
                raise BackendError(f"{what}: short read ({len(data)} of {length} bytes at {offset})")
        return data

    def stat(self, ftype: FileType, name: str) -> int:
        response = self._request("HEAD", self._existing(ftype, name), f"{ftype.value}/{name}")
        try:
            return int(response.headers["content-length"])
        except (KeyError, ValueError) as exc:
            raise BackendError(f"{ftype.value}/{name}: server sent no size") from exc

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        if ftype is FileType.CONFIG:
            try:
                yield "config", self.stat(ftype, "config")
            except NotFound:
                pass
            return
        try:
            response = self._request("GET", self._base.join(f"{ftype.value}/"), f"list {ftype.value}")
        except NotFound:
            return
        try:
            entries = response.json()
            items = [(str(e["name"]), int(e["size"])) for e in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"list {ftype.value}: the server's answer is not a v2 listing") from exc
        yield from items

    def remove(self, ftype: FileType, name: str) -> None:
        self._request("DELETE", self._existing(ftype, name), f"remove {ftype.value}/{name}")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RestBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _root_cause(exc: BaseException) -> BaseException:
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            return exc
        exc = nxt


def _describe(exc: httpx.TransportError) -> str:
    """The innermost cause, e.g. 'connection refused', not httpx's nested wrapper text."""
    cause = _root_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verification failed ({cause.verify_message}); set BACKUPFS_REST_CACERT for a private CA"
    if isinstance(cause, OSError) and cause.strerror and not isinstance(cause, ssl.SSLError):
        return cause.strerror.lower()
    text = str(cause) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
