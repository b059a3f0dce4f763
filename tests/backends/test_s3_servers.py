"""Where S3 servers differ: each test runs on moto and on a real Ceph RGW (or on RGW alone where
moto does not check the thing at all), and covers one row of docs/backends.md, "S3 servers
compared"."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from support.servers import FAST_S3, MotoServer, RGWServer

from backupfs.backends import s3
from backupfs.backends.base import Backend, FileType
from backupfs.backends.registry import open_backend
from backupfs.errors import AlreadyExists, BackendError, NotFound, TransientBackendError

S3Server = MotoServer | RGWServer


@pytest.fixture
def client(any_s3_server: S3Server) -> Iterator[Any]:
    """A plain boto3 client straight to the server, behind the backend's back."""
    c = boto3.client("s3", endpoint_url=any_s3_server.endpoint, region_name="us-east-1")
    yield c
    c.close()


def _bucket() -> str:
    return f"b-{uuid.uuid4().hex[:16]}"


def test_an_error_without_a_message_is_named_by_its_code(any_s3_server: S3Server) -> None:
    """RGW sends no <Message> with most errors (botocore reports None): the error line must not
    end in 'InvalidBucketName: None'."""
    backend = open_backend(any_s3_server.url("repo", bucket="ab"), **FAST_S3)  # too short a name
    with pytest.raises(BackendError) as info:
        backend.create()
    assert not isinstance(info.value, TransientBackendError)
    assert "None" not in str(info.value)
    assert str(info.value).startswith("cannot create bucket ab: InvalidBucketName"), info.value
    backend.close()


def test_listing_spans_pages(any_s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing longer than a page follows the continuation tokens, each key once. Pages of
    7 keys instead of 1000: the same protocol, without a thousand uploads."""
    monkeypatch.setattr(s3, "LIST_PAGE", 7)
    backend = open_backend(any_s3_server.url(f"list-{uuid.uuid4().hex[:8]}"), **FAST_S3)
    backend.create()
    names = {hashlib.sha256(b"%d" % i).hexdigest(): i % 7 for i in range(7 * 4 + 3)}
    for name, size in names.items():
        backend.save(FileType.DATA, name, b"x" * size)
    listed = list(backend.list(FileType.DATA))
    assert len(listed) == len(names)
    assert dict(listed) == names
    backend.close()


def _config_race(backend: Backend) -> list[bool]:
    barrier = threading.Barrier(8)

    def init(i: int) -> bool:
        barrier.wait()
        try:
            backend.save(FileType.CONFIG, "config", b"config %d" % i)
        except AlreadyExists:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(init, range(8)))


def test_config_race_on_a_versioned_bucket(any_s3_server: S3Server, client: Any) -> None:
    """RGW (Ceph 16) ignores If-None-Match on a bucket with versioning enabled (and Object Lock
    needs versioning): every racing `init` got its PUT through, each as a new version. The
    oldest version must win and the others see AlreadyExists and take their versions back."""
    bucket = _bucket()
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    backend = open_backend(any_s3_server.url("repo", bucket=bucket), **FAST_S3)
    backend.create()
    won = _config_race(backend)
    assert won.count(True) == 1, won
    assert backend.load(FileType.CONFIG, "config") == b"config %d" % won.index(True)
    versions = client.list_object_versions(Bucket=bucket, Prefix="repo/config")
    assert len(versions.get("Versions", [])) == 1, versions.get("Versions")
    assert not versions.get("DeleteMarkers")
    with pytest.raises(AlreadyExists):  # and later, one at a time
        backend.save(FileType.CONFIG, "config", b"late")
    backend.close()


# --- RGW only: moto accepts any keys, any region and any Content-MD5 ---


def test_a_damaged_upload_is_refused(rgw_server: RGWServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads carry Content-MD5; RGW checks it (BadDigest, retried as transient) and stores
    nothing. moto 5 does not check it at all."""
    backend = open_backend(rgw_server.url(f"md5-{uuid.uuid4().hex[:8]}"), **FAST_S3)
    backend.create()
    real_md5 = hashlib.md5
    monkeypatch.setattr(s3.hashlib, "md5", lambda data, **kw: real_md5(bytes(data) + b"!", **kw))
    with pytest.raises(TransientBackendError, match="BadDigest"):
        backend.save(FileType.DATA, "ab" * 32, b"payload")
    monkeypatch.undo()
    with pytest.raises(NotFound):
        backend.stat(FileType.DATA, "ab" * 32)
    backend.close()


def test_wrong_credentials_are_named(rgw_server: RGWServer, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = open_backend(rgw_server.url("repo"), **FAST_S3)
    backend.create()
    backend.close()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not the secret")
    backend = open_backend(rgw_server.url("repo"), **FAST_S3)
    # a HEAD's 403 has no body: the keys or the permissions, the server does not say which
    with pytest.raises(BackendError, match=r"^config: access denied by .*\(wrong S3 credentials, or no permission\)$"):
        backend.exists()
    with pytest.raises(BackendError, match=r"S3 credentials rejected \(SignatureDoesNotMatch\)"):
        backend.load(FileType.KEY, "a" * 64)
    backend.close()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    backend = open_backend(rgw_server.url("repo"), **FAST_S3)
    with pytest.raises(BackendError, match=r"S3 credentials rejected \(InvalidAccessKeyId\)") as info:
        list(backend.list(FileType.KEY))
    assert not isinstance(info.value, TransientBackendError)
    backend.close()


def test_a_new_bucket_needs_a_region_the_server_has(rgw_server: RGWServer) -> None:
    """RGW signs requests for any region but creates buckets only in its zonegroup's api_name
    ("default" on a new cluster) or with no LocationConstraint (us-east-1)."""
    bucket = _bucket()
    elsewhere = open_backend(rgw_server.url("repo", bucket=bucket), s3_region="eu-west-1", **FAST_S3)
    with pytest.raises(BackendError, match=r"InvalidLocationConstraint.*set s3_region") as info:
        elsewhere.create()
    assert not isinstance(info.value, TransientBackendError)
    elsewhere.close()
    home = open_backend(rgw_server.url("repo", bucket=bucket), s3_region="default", **FAST_S3)
    home.create()
    home.save(FileType.KEY, "a" * 64, b"key")
    assert home.load(FileType.KEY, "a" * 64) == b"key"
    home.close()
