"""A repository in an S3 bucket (AWS or any S3-compatible server), on boto3.

Keys mirror the local layout under an optional prefix: `<prefix>/config`, `<prefix>/keys/<name>`,
`<prefix>/data/<2 hex>/<name>`, ... S3 does not need the data fan-out, but keeping it means a
repository can be copied between a directory, an SFTP server and a bucket with plain tools
(`aws s3 sync`, rclone) and opened from any of them.

A PUT is atomic (an object appears whole or not at all), so there are no temporary files.
boto3 clients are thread-safe: one client with a connection pool serves every thread.

With S3 Object Lock (`set_retention`, format.md "Object Lock") every object but the lock files is
written with a retain-until date, and `remove` deletes an object's versions by their ids: on a
versioned bucket a plain DELETE would only add a delete marker, hiding the object while its bytes
stay stored (and billed) for ever.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.config
import botocore.exceptions as bex
import botocore.session

from backupfs.backends import layout
from backupfs.backends.base import RETENTION_MODES, STALE_TEMPORARY_AGE, BackendInfo, FileType, RetentionSupport
from backupfs.errors import AlreadyExists, BackendError, NotFound, TransientBackendError, UnderRetention

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
LIST_PAGE = 1000  # keys per ListObjectsV2 request: the most AWS and Ceph RGW return
_CONDITIONAL_UNSUPPORTED = {"NotImplemented", "InvalidArgument", "InvalidRequest"}
# A version the server refused to delete counts as still under retention when its retain-until
# date is no further than this in our past: the server's clock may be behind ours.
CLOCK_SKEW = 86400.0
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
        self.connections = connections  # requests at once: each GET waits on its own connection
        self._conditional_put = True  # If-None-Match on PUT; cleared if the server rejects it
        self._retention: tuple[str, float] | None = None  # (S3 mode, seconds) for saves: set_retention
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
        if self._retention is not None:  # Object Lock can be chosen only when a bucket is made
            kwargs["ObjectLockEnabledForBucket"] = True
        try:
            self._client.create_bucket(Bucket=self.bucket, **kwargs)
        except bex.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise self._error(exc, f"cannot create bucket {self.bucket}") from exc
        except (bex.BotoCoreError, OSError) as exc:
            raise self._error(exc, f"cannot create bucket {self.bucket}") from exc
        log.info("created bucket %s%s", self.bucket, " with Object Lock" if self._retention else "")

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
            if self._retention is None or ftype is FileType.LOCK:  # lock files must go again
                self._call(f"save {what}", "put_object", **kwargs)
                return
            kwargs["ObjectLockMode"] = self._retention[0]
            kwargs["ObjectLockRetainUntilDate"] = _date(time.time() + self._retention[1])
            try:
                self._client.put_object(Bucket=self.bucket, **kwargs)
            except bex.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidRequest":
                    raise BackendError(
                        f"save {what}: bucket {self.bucket} refuses a retention date: it has no Object Lock, "
                        "which this repository needs (it was created with `init --object-lock`)"
                    ) from exc
                raise self._error(exc, f"save {what}") from exc
            except (bex.BotoCoreError, OSError) as exc:
                raise self._error(exc, f"save {what}") from exc
            return
        # The config must never be replaced. A conditional PUT makes that atomic; servers that
        # reject the condition get check-then-put, which two simultaneous `init`s can race.
        if self.exists():
            raise AlreadyExists(f"config already exists at {self.location}")
        if self._conditional_put:
            try:
                resp = self._client.put_object(Bucket=self.bucket, IfNoneMatch="*", **kwargs)
                self._first_version_wins(key, what, resp.get("VersionId"))
                self._retain_config(key, what, resp.get("VersionId"))
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
        self._retain_config(key, what, resp.get("VersionId"))

    def _retain_config(self, key: str, what: str, version: str | None) -> None:
        """The config is written without a retention and gets it once its PUT has won: a racing
        `init` that lost must be able to delete its own version (`_first_version_wins`). The
        retention goes to our version by its id, never to whichever version is newest."""
        if self._retention is None:
            return
        kwargs: dict[str, Any] = {"Key": key, "Retention": self._retention_of(time.time() + self._retention[1])}
        if version and version != "null":
            kwargs["VersionId"] = version
        self._call(f"save {what}", "put_object_retention", **kwargs)

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
        for obj in self._objects(f"{root}{ftype.value}/", f"list {ftype.value}"):
            parent, _, name = str(obj["Key"])[len(root) :].rpartition("/")
            if layout.belongs(ftype, parent, name):
                yield name, int(obj["Size"])

    def _objects(self, prefix: str, what: str) -> Iterator[dict[str, Any]]:
        """Every object under `prefix`, a page of LIST_PAGE per request; an error names `what`."""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE}))
        while True:
            try:
                page = next(pages)
            except StopIteration:
                return
            except (bex.BotoCoreError, bex.ClientError, OSError) as exc:
                raise self._error(exc, what) from exc
            yield from page.get("Contents", ())

    def list_foreign(self) -> Iterator[str]:
        """Every key under the prefix that is in a folder of the layout (or at its root) and is not
        a repository file: one listing of the whole prefix."""
        root = f"{self.prefix}/" if self.prefix else ""
        for obj in self._objects(root, "list the repository"):
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
        head = self._call(f"remove {what}", "head_object", Key=key)
        if self._retention is None:
            # Without Object Lock a versioned bucket is the owner's own safety net (and its
            # lifecycle rules reclaim old versions): a plain delete, which keeps the history.
            self._call(f"remove {what}", "delete_object", Key=key)
            return
        until = _epoch(head.get("ObjectLockRetainUntilDate"))
        if until is not None and until > time.time():
            raise UnderRetention(f"{what} is under Object Lock retention until {_show(until)}", until)
        versions = self._versions(key, what)
        if versions is None:  # not allowed to list versions: at least the one we saw
            versions = (str(head["VersionId"]),) if head.get("VersionId") else ()
        if not versions:  # versioning off (a copy of the repository in a plain bucket)
            self._call(f"remove {what}", "delete_object", Key=key)
            return
        for version in versions:
            try:
                self._client.delete_object(Bucket=self.bucket, Key=key, VersionId=version)
            except bex.ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
                    raise self._refused(key, what, version, exc) from exc
                raise self._error(exc, f"remove {what}") from exc
            except (bex.BotoCoreError, OSError) as exc:
                raise self._error(exc, f"remove {what}") from exc

    def _versions(self, key: str, what: str) -> tuple[str, ...] | None:
        """Ids of every version and delete marker of `key`, newest version first; None when the
        credentials may not list versions."""
        try:
            resp = self._client.list_object_versions(Bucket=self.bucket, Prefix=key)
        except bex.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
                return None
            raise self._error(exc, f"remove {what}") from exc
        except (bex.BotoCoreError, OSError) as exc:
            raise self._error(exc, f"remove {what}") from exc
        found = [v for v in resp.get("Versions", ()) if v.get("Key") == key]
        found += [m for m in resp.get("DeleteMarkers", ()) if m.get("Key") == key]
        return tuple(str(v["VersionId"]) for v in found if v.get("VersionId"))

    def _refused(self, key: str, what: str, version: str, exc: bex.ClientError) -> BackendError:
        """A version the server would not delete: locked (an older version, or the server's clock
        behind ours), or credentials without s3:DeleteObjectVersion."""
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key, VersionId=version)
            until = _epoch(head.get("ObjectLockRetainUntilDate"))
        except (bex.BotoCoreError, bex.ClientError, OSError):
            until = None
        if until is not None and until > time.time() - CLOCK_SKEW:
            return UnderRetention(f"{what} is under Object Lock retention until {_show(until)}", until)
        return BackendError(
            f"remove {what}: access denied deleting version {version} "
            "(deleting on an Object Lock repository needs the s3:DeleteObjectVersion permission)"
        )

    # --- Object Lock (backends.base.ObjectLock) ---

    def retention_support(self) -> RetentionSupport:
        try:
            resp = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except bex.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code == "ObjectLockConfigurationNotFoundError" or code == "NotImplemented" or status == 501:
                return RetentionSupport(False)
            if code != "NoSuchBucket" and status == 403:
                return RetentionSupport(None)
            raise self._error(exc, f"Object Lock configuration of bucket {self.bucket}") from exc
        except (bex.BotoCoreError, OSError) as exc:
            raise self._error(exc, f"Object Lock configuration of bucket {self.bucket}") from exc
        config = resp.get("ObjectLockConfiguration") or {}
        rule = (config.get("Rule") or {}).get("DefaultRetention")
        default = None
        if rule:
            span = f"{rule['Days']} days" if rule.get("Days") else f"{rule.get('Years', '?')} years"
            default = f"{str(rule.get('Mode', '?')).lower()}, {span}"
        return RetentionSupport(config.get("ObjectLockEnabled") == "Enabled", default)

    def set_retention(self, mode: str | None, seconds: float = 0.0) -> None:
        if mode is None:
            self._retention = None
            return
        if mode not in RETENTION_MODES or seconds <= 0:
            raise BackendError(f"invalid retention {mode!r} for {seconds} seconds")
        self._retention = (mode.upper(), seconds)

    def retention(self, ftype: FileType, name: str) -> float | None:
        head = self._call(self._what(ftype, name), "head_object", Key=self._key(ftype, name))
        return _epoch(head.get("ObjectLockRetainUntilDate"))

    def extend_retention(self, ftype: FileType, name: str, until: float) -> None:
        """One PutObjectRetention on the newest version; asks (HEAD) only when it is refused,
        which a later date already set causes (S3 never shortens one)."""
        what = self._what(ftype, name)
        key = self._key(ftype, name)
        if self._retention is None:
            raise BackendError(f"extend retention of {what}: no retention mode set")
        try:
            self._client.put_object_retention(Bucket=self.bucket, Key=key, Retention=self._retention_of(until))
            return
        except bex.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 403:
                raise self._error(exc, f"extend retention of {what}") from exc
            refused = exc
        except (bex.BotoCoreError, OSError) as exc:
            raise self._error(exc, f"extend retention of {what}") from exc
        current = self.retention(ftype, name)
        if current is None or current < until:
            raise self._error(refused, f"extend retention of {what}")

    def _retention_of(self, until: float) -> dict[str, Any]:
        assert self._retention is not None
        return {"Mode": self._retention[0], "RetainUntilDate": _date(until)}

    def info(self) -> BackendInfo:
        return BackendInfo(local=False, append_only=False, sweeps_temporaries=False, reads_in_flight=self.connections)

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


def _date(when: float) -> datetime:
    """A retain-until date, rounded up to whole seconds (RGW keeps no more on a PUT)."""
    return datetime.fromtimestamp(-int(-when // 1), UTC)


def _epoch(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def _show(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
