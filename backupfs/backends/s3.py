"""A repository in an S3 bucket (AWS or any S3-compatible server), on boto3.

Keys mirror the local layout under an optional prefix: `<prefix>/config`, `<prefix>/keys/<name>`,
`<prefix>/data/<2 hex>/<name>`, ... S3 does not need the data fan-out, but keeping it means a
repository can be copied between a directory, an SFTP server and a bucket with plain tools
(`aws s3 sync`, rclone) and opened from any of them.

A PUT is atomic (an object appears whole or not at all), so there are no temporary files.
boto3 clients are thread-safe: one client with a connection pool serves every thread.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions as bex
import botocore.session

from backupfs.backends import layout
from backupfs.backends.base import STALE_TEMPORARY_AGE, BackendInfo, FileType
from backupfs.errors import AlreadyExists, BackendError, NotFound, TransientBackendError

log = logging.getLogger(__name__)

_THROTTLED = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequests",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "BadDigest",  # the body was damaged on the way: sending it again helps
}
_INFO = BackendInfo(local=False, append_only=False, sweeps_temporaries=False)
LIST_PAGE = 1000  # keys per ListObjectsV2 request: the most AWS and Ceph RGW return
_CONDITIONAL_UNSUPPORTED = {"NotImplemented", "InvalidArgument", "InvalidRequest"}
# Endpoints that name their region, so users need not repeat it: AWS, Backblaze B2, and R2
# (whose only region is "auto").
_REGION_HOSTS = [
    (re.compile(r"^s3[.-](?!external-1)([a-z0-9-]+)\.amazonaws\.com$"), r"\1"),
    (re.compile(r"^s3\.([a-z0-9-]+)\.backblazeb2\.com$"), r"\1"),
    (re.compile(r"^[a-z0-9-]+\.(?:[a-z]+\.)?r2\.cloudflarestorage\.com$"), "auto"),
]


def region_of(endpoint: str | None) -> str | None:
    """The signing region an endpoint URL implies, if any."""
    host = re.sub(r"^\w+://", "", endpoint or "").split("/")[0].split(":")[0].lower()
    for pattern, region in _REGION_HOSTS:
        m = pattern.match(host)
        if m:
            return m.expand(region)
    return None


class _NoBucket(BackendError):
    pass


class S3Backend:
    """Repository objects in `bucket` under `prefix`.

    `endpoint` is None for AWS itself, else the server's URL (http://host:9000 for MinIO).
    Credentials come from boto3's default chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    (+ AWS_SESSION_TOKEN), AWS_PROFILE or `profile`, ~/.aws/credentials, instance roles.
    """

    def __init__(
        self,
        endpoint: str | None,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        profile: str | None = None,
        addressing_style: str | None = None,
        connections: int = 16,
        timeout: float = 60.0,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._conditional_put = True  # If-None-Match on PUT; cleared if the server rejects it
        try:
            self._client: Any = self._make_client(endpoint, region, profile, addressing_style, connections, timeout)
        except bex.ProfileNotFound as exc:
            raise BackendError(f"AWS profile {profile!r} not found") from exc
        except (bex.BotoCoreError, ValueError) as exc:
            raise BackendError(f"cannot set up an S3 client for {self._server()}: {_first_line(exc)}") from exc

    def _make_client(
        self,
        endpoint: str | None,
        region: str | None,
        profile: str | None,
        addressing_style: str | None,
        connections: int,
        timeout: float,
    ) -> Any:
        session = _new_session(profile)
        self.region = region or region_of(endpoint) or session.region_name or "us-east-1"
        config = botocore.config.Config(
            region_name=self.region,
            max_pool_connections=max(16, connections),
            connect_timeout=min(timeout, 10.0),
            read_timeout=timeout,
            tcp_keepalive=True,
            # RetryBackend retries with jitter; botocore retrying underneath would multiply it.
            retries={"mode": "standard", "total_max_attempts": 1},
            # Path style works on every S3-compatible server and needs no wildcard DNS.
            s3={"addressing_style": addressing_style or ("auto" if endpoint is None else "path")},
            # Trailing CRC checksums (aws-chunked uploads) break many S3-compatible servers;
            # Content-MD5, which all of them check, protects uploads instead (see save).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        with _loader_lock:
            return session.client("s3", endpoint_url=endpoint, config=config)

    @property
    def location(self) -> str:
        base = self.endpoint or "https://s3.amazonaws.com"
        return f"s3:{base}/{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def _key(self, ftype: FileType, name: str) -> str:
        rel = layout.path(ftype, name)
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @staticmethod
    def _what(ftype: FileType, name: str) -> str:
        return "config" if ftype is FileType.CONFIG else f"{ftype.value}/{name}"

    def _error(self, exc: Exception, what: str) -> BackendError:
        """One-line BackendError of the right kind for a boto3/botocore failure."""
        if isinstance(exc, bex.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            # Ceph RGW sends no <Message> with most errors (botocore then gives None).
            message = str(err.get("Message") or "")
            detail = f"{code}: {message}" if message and message != code else code or str(status)
            if code == "NoSuchBucket":
                return _NoBucket(f"{what}: bucket {self.bucket} does not exist")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return NotFound(f"{what} not found")
            if code in ("PreconditionFailed", "412") or status == 412:
                return AlreadyExists(f"{what} already exists at {self.location}")
            if code in _THROTTLED or status == 429 or status >= 500:
                return TransientBackendError(f"{what}: {self._server()} is unavailable ({detail})")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
                return BackendError(f"{what}: S3 credentials rejected ({code}); check AWS_ACCESS_KEY_ID etc.")
            if code == "403":  # a HEAD: no body says whether the keys or the permissions are wrong
                return BackendError(
                    f"{what}: access denied by {self._server()} (wrong S3 credentials, or no permission)"
                )
            if code == "AccessDenied" or status == 403:
                return BackendError(f"{what}: access denied by {self._server()}")
            if code == "InvalidLocationConstraint":  # Ceph RGW: only its zonegroup's api_name
                return BackendError(
                    f"{what}: {detail} (the server has no region {self.region!r}: "
                    "set s3_region to one it has, or create the bucket first)"
                )
            return BackendError(f"{what}: {detail}")
        if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
            return BackendError(
                f"{what}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
            )
        if isinstance(exc, bex.SSLError) and "CERTIFICATE" in str(exc).upper():
            return BackendError(f"{what}: TLS certificate of {self._server()} not trusted")
        transient = (bex.ConnectionError, bex.HTTPClientError, bex.IncompleteReadError, OSError)
        if isinstance(exc, transient):
            return TransientBackendError(f"{what}: cannot reach {self._server()}: {_network_reason(exc)}")
        return BackendError(f"{what}: {_first_line(exc)}")

    def _server(self) -> str:
        return self.endpoint or "S3"

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(Bucket=self.bucket, **kwargs)
        except (bex.BotoCoreError, bex.ClientError, OSError) as exc:
            raise self._error(exc, what) from exc

    # --- Backend protocol ---

    def exists(self) -> bool:
        try:
            self.stat(FileType.CONFIG, layout.CONFIG_NAME)
        except (NotFound, _NoBucket):
            return False
        return True

    def create(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except bex.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise self._error(exc, f"bucket {self.bucket}") from exc
            self._create_bucket()
        except (bex.BotoCoreError, OSError) as exc:
            raise self._error(exc, f"bucket {self.bucket}") from exc
        if self.exists():
            raise AlreadyExists(f"a repository already exists at {self.location}")

    def _create_bucket(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.region not in ("us-east-1", "auto"):
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(Bucket=self.bucket, **kwargs)
        except bex.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise self._error(exc, f"cannot create bucket {self.bucket}") from exc
        except (bex.BotoCoreError, OSError) as exc:
            raise self._error(exc, f"cannot create bucket {self.bucket}") from exc
        log.info("created bucket %s", self.bucket)

    def save(self, ftype: FileType, name: str, data: bytes | memoryview) -> None:
        key = self._key(ftype, name)
        what = self._what(ftype, name)
        body = data if isinstance(data, bytes) else bytes(data)
        kwargs: dict[str, Any] = {
            "Key": key,
            "Body": body,
            "ContentMD5": base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode(),
        }
        if ftype is not FileType.CONFIG:
            self._call(f"save {what}", "put_object", **kwargs)
            return
        # The config must never be replaced. A conditional PUT makes that atomic; servers that
        # reject the condition get check-then-put, which two simultaneous `init`s can race.
        if self.exists():
            raise AlreadyExists(f"config already exists at {self.location}")
        if self._conditional_put:
            try:
                resp = self._client.put_object(Bucket=self.bucket, IfNoneMatch="*", **kwargs)
                self._first_version_wins(key, what, resp.get("VersionId"))
                return
            except bex.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code not in _CONDITIONAL_UNSUPPORTED and status != 501:
                    raise self._error(exc, f"save {what}") from exc
                self._conditional_put = False
                log.warning("%s: no conditional PUT support; config written with check-then-put", self.location)
            except (bex.BotoCoreError, OSError) as exc:
                raise self._error(exc, f"save {what}") from exc
        resp = self._call(f"save {what}", "put_object", **kwargs)
        self._first_version_wins(key, what, resp.get("VersionId"))

    def _first_version_wins(self, key: str, what: str, version: str | None) -> None:
        """On a versioned bucket, undo a config PUT that another one beat.

        Ceph RGW (16.x) ignores If-None-Match once versioning is enabled (which Object Lock
        needs): racing `init`s all get their PUT through, each as a new version. The versions
        are listed newest first in the order they became visible, so every racer agrees that the
        oldest since the last delete marker is the config; the others delete their own version
        and report AlreadyExists. A server that did evaluate the condition leaves one version.
        """
        if not version or version == "null":  # versioning off or suspended: the condition held
            return
        try:
            resp = self._client.list_object_versions(Bucket=self.bucket, Prefix=key)
        except bex.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
                log.info("%s: cannot list the config's versions; trusting If-None-Match", self.location)
                return
            raise self._error(exc, f"save {what}") from exc
        except (bex.BotoCoreError, OSError) as exc:
            raise self._error(exc, f"save {what}") from exc
        versions = [v for v in resp.get("Versions", ()) if v.get("Key") == key]
        markers = [m["LastModified"] for m in resp.get("DeleteMarkers", ()) if m.get("Key") == key]
        if markers:  # a config deleted earlier: only what was written since counts
            versions = [v for v in versions if v["LastModified"] > max(markers)]
        if not versions or versions[-1].get("VersionId") == version:
            return
        self._call(f"save {what}", "delete_object", Key=key, VersionId=version)
        raise AlreadyExists(f"config already exists at {self.location}")

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self._key(ftype, name)
        what = self._what(ftype, name)
        if offset < 0 or (length is not None and length < 0):
            raise BackendError(f"load {what}: negative offset or length")
        if length == 0:  # an empty Range is invalid HTTP; only existence and size matter
            if self.stat(ftype, name) < offset:
                raise BackendError(f"{what}: short read (file ends before byte {offset})")
            return b""
        kwargs: dict[str, Any] = {"Key": key}
        if length is not None:
            kwargs["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            kwargs["Range"] = f"bytes={offset}-"
        try:
            resp = self._client.get_object(Bucket=self.bucket, **kwargs)
            with resp["Body"] as body:
                data: bytes = body.read()
        except bex.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":  # offset beyond the end
                if length is None:
                    return b""
                raise BackendError(f"{what}: short read (file ends before byte {offset + length})") from exc
            raise self._error(exc, f"load {what}") from exc
        except (bex.BotoCoreError, OSError) as exc:
            raise self._error(exc, f"load {what}") from exc
        if "Range" in kwargs and "ContentRange" not in resp:  # a server that ignored the Range
            data = data[offset:] if length is None else data[offset : offset + length]
        if length is not None and len(data) != length:
            raise BackendError(f"{what}: short read ({len(data)} of {length} bytes at {offset})")
        return data

    def stat(self, ftype: FileType, name: str) -> int:
        what = self._what(ftype, name)
        resp = self._call(what, "head_object", Key=self._key(ftype, name))
        return int(resp["ContentLength"])

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        if ftype is FileType.CONFIG:
            if self.exists():
                yield layout.CONFIG_NAME, self.stat(ftype, layout.CONFIG_NAME)
            return
        root = f"{self.prefix}/" if self.prefix else ""
        prefix = f"{root}{ftype.value}/"
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE}))
        while True:
            try:
                page = next(pages)
            except StopIteration:
                return
            except (bex.BotoCoreError, bex.ClientError, OSError) as exc:
                raise self._error(exc, f"list {ftype.value}") from exc
            for obj in page.get("Contents", ()):
                parent, _, name = str(obj["Key"])[len(root) :].rpartition("/")
                if layout.belongs(ftype, parent, name):
                    yield name, int(obj["Size"])

    def list_foreign(self) -> Iterator[str]:
        """Every key under the prefix that is in a folder of the layout (or at its root) and is not
        a repository file: one listing of the whole prefix."""
        root = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=root, PaginationConfig={"PageSize": LIST_PAGE}))
        while True:
            try:
                page = next(pages)
            except StopIteration:
                return
            except (bex.BotoCoreError, bex.ClientError, OSError) as exc:
                raise self._error(exc, "list the repository") from exc
            for obj in page.get("Contents", ()):
                rel = str(obj["Key"])[len(root) :]
                parent, _, name = rel.rpartition("/")
                top = parent.split("/", 1)[0]
                in_layout = parent == "" or top in layout.FOLDERS
                depth_ok = parent.count("/") <= (1 if top == FileType.DATA.value else 0)
                if in_layout and depth_ok and layout.is_foreign(parent, name):
                    yield rel

    def remove(self, ftype: FileType, name: str) -> None:
        # S3 deletes a missing key without complaint; the contract wants NotFound, hence the
        # HEAD (a concurrent remove between the two calls makes both succeed: harmless).
        what = self._what(ftype, name)
        key = self._key(ftype, name)
        self._call(f"remove {what}", "head_object", Key=key)
        self._call(f"remove {what}", "delete_object", Key=key)

    def info(self) -> BackendInfo:
        return _INFO

    def remove_stale_temporaries(self, max_age: float = STALE_TEMPORARY_AGE) -> int:
        return 0  # a PUT is atomic: there are none

    def close(self) -> None:
        self._client.close()


_loader_lock = threading.Lock()
_loader: Any = None


def _new_session(profile: str | None) -> Any:
    """A fresh boto3 session (credentials are looked up anew) sharing the parsed API models:
    parsing them again costs about 0.5 s per backend."""
    global _loader
    core = botocore.session.get_session()
    with _loader_lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core, profile_name=profile)


def _network_reason(exc: BaseException) -> str:
    """Why a request did not get through: botocore's own text repeats the URL but not the cause
    ('Could not connect to the endpoint URL: "http://..."'); the cause is down the exception
    chain ("Connection refused", "Name or service not known", a timeout)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, TimeoutError):
            return "timed out"
        if isinstance(cause, http.client.RemoteDisconnected):
            return "the server closed the connection without a response"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
        cause = cause.__cause__ or cause.__context__
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
