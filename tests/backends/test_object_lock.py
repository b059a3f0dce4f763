"""S3 Object Lock on real servers: Ceph RGW, and moto where it implements the rule tested.

A client holding the bucket's keys must be unable to delete or replace what a locked repository
stored, through the backend or through raw S3 calls; what the lock allows (lock files, files
whose retention has passed) must really go, every version of it, so the space is freed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError
from supersede import supersede_everything, undo
from support.servers import FAST_S3, MotoServer, RGWServer

from backupfs.backends import layout
from backupfs.backends.base import Backend, FileType, ObjectLock
from backupfs.backends.registry import open_backend
from backupfs.errors import AlreadyExists, BackendError, NotFound, UnderRetention
from backupfs.repository.repo import Repository

from .test_s3_servers import _config_race

S3Server = MotoServer | RGWServer
ID = "ab" * 32
HOUR = 3600.0


@pytest.fixture
def client(any_s3_server: S3Server) -> Iterator[Any]:
    """A plain boto3 client straight to the server: what a thief of the keys would use."""
    c = _client(any_s3_server)
    yield c
    c.close()


def _client(server: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _bucket() -> str:
    return f"lock-{uuid.uuid4().hex[:16]}"


def _locked_backend(server: S3Server, bucket: str, mode: str = "compliance", seconds: float = HOUR) -> Any:
    """A backend writing with retention, on a new bucket that create() makes with Object Lock."""
    backend = open_backend(server.url("repo", bucket=bucket), **FAST_S3)
    assert isinstance(backend, ObjectLock)
    backend.set_retention(mode, seconds)
    backend.create()
    return backend


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _versions(client: Any, bucket: str, key: str) -> tuple[list[str], list[str]]:
    resp = client.list_object_versions(Bucket=bucket, Prefix=key)
    versions = [v["VersionId"] for v in resp.get("Versions", ()) if v["Key"] == key]
    markers = [m["VersionId"] for m in resp.get("DeleteMarkers", ()) if m["Key"] == key]
    return versions, markers


def _status(exc: pytest.ExceptionInfo[ClientError]) -> int:
    return int(exc.value.response["ResponseMetadata"]["HTTPStatusCode"])


def test_create_makes_the_bucket_with_object_lock(any_s3_server: S3Server, client: Any) -> None:
    bucket = _bucket()
    backend = _locked_backend(any_s3_server, bucket)
    config = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert config["ObjectLockEnabled"] == "Enabled"
    assert client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    support = backend.retention_support()
    assert support.enabled is True and support.default_retention is None
    backend.close()


def test_retention_support_tells_a_plain_bucket_and_a_default_rule(any_s3_server: S3Server, client: Any) -> None:
    plain = open_backend(any_s3_server.url("repo", bucket=_bucket()), **FAST_S3)
    plain.create()  # no retention set: an ordinary bucket
    assert isinstance(plain, ObjectLock)
    assert plain.retention_support().enabled is False
    bucket = _bucket()
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 3}},
        },
    )
    ruled = open_backend(any_s3_server.url("repo", bucket=bucket), **FAST_S3)
    assert isinstance(ruled, ObjectLock)
    assert ruled.retention_support().enabled is True
    assert ruled.retention_support().default_retention == "governance, 3 days"
    plain.close()
    ruled.close()


def test_every_file_but_locks_is_written_with_a_retention(any_s3_server: S3Server, client: Any) -> None:
    bucket = _bucket()
    backend = _locked_backend(any_s3_server, bucket, "governance", 2 * HOUR)
    before = time.time()
    for ftype in (FileType.DATA, FileType.INDEX, FileType.SNAPSHOT, FileType.KEY, FileType.LOCK):
        backend.save(ftype, ID, b"content of " + ftype.value.encode())
    backend.save(FileType.CONFIG, "config", b"config")
    for ftype in (FileType.DATA, FileType.INDEX, FileType.SNAPSHOT, FileType.KEY, FileType.CONFIG):
        name = "config" if ftype is FileType.CONFIG else ID
        until = backend.retention(ftype, name)
        assert until is not None and before + 2 * HOUR - 1 <= until <= time.time() + 2 * HOUR + 1, ftype
        head = client.head_object(Bucket=bucket, Key="repo/" + layout.path(ftype, name))
        assert head["ObjectLockMode"] == "GOVERNANCE"
    assert backend.retention(FileType.LOCK, ID) is None
    backend.remove(FileType.LOCK, ID)  # lock files come and go
    assert _versions(client, bucket, f"repo/locks/{ID}") == ([], [])  # gone, not hidden
    backend.close()


def test_a_locked_file_cannot_be_removed_by_the_backend(any_s3_server: S3Server) -> None:
    backend = _locked_backend(any_s3_server, _bucket())
    backend.save(FileType.DATA, ID, b"pack")
    with pytest.raises(UnderRetention) as info:
        backend.remove(FileType.DATA, ID)
    assert info.value.until is not None and info.value.until > time.time() + HOUR - 60
    assert "under Object Lock retention until" in str(info.value)
    assert backend.load(FileType.DATA, ID) == b"pack"
    assert dict(backend.list(FileType.DATA)) == {ID: 4}
    backend.close()


def test_a_thief_of_the_keys_cannot_delete_or_replace_a_locked_file(any_s3_server: S3Server, client: Any) -> None:
    """Raw S3 calls, with the keys the repository uses: deleting the version is refused; a PUT
    over it or a plain DELETE only adds a version or a delete marker, and the locked bytes stay
    readable by their version id."""
    bucket = _bucket()
    backend = _locked_backend(any_s3_server, bucket)
    backend.save(FileType.INDEX, ID, b"the real index")
    key = f"repo/index/{ID}"
    (original,), _ = _versions(client, bucket, key)
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=bucket, Key=key, VersionId=original)
    assert _status(refused) == 403
    client.put_object(Bucket=bucket, Key=key, Body=b"garbage", ContentMD5=_md5(b"garbage"))
    client.delete_object(Bucket=bucket, Key=key)  # a delete marker on top
    with pytest.raises(NotFound):  # hidden objects are not shown ...
        backend.stat(FileType.INDEX, ID)
    assert list(backend.list(FileType.INDEX)) == []
    versions, markers = _versions(client, bucket, key)
    assert original in versions and len(versions) == 2 and len(markers) == 1
    body = client.get_object(Bucket=bucket, Key=key, VersionId=original)["Body"].read()
    assert body == b"the real index"  # ... and the locked bytes are all there
    with pytest.raises(ClientError) as again:
        client.delete_object(Bucket=bucket, Key=key, VersionId=original)
    assert _status(again) == 403
    backend.close()


def test_a_retention_cannot_be_shortened(rgw_server: RGWServer) -> None:
    """RGW only: moto 5 lets a COMPLIANCE retention be shortened (and turned into GOVERNANCE)."""
    bucket = _bucket()
    backend = _locked_backend(rgw_server, bucket)
    backend.save(FileType.SNAPSHOT, ID, b"snapshot")
    until = backend.retention(FileType.SNAPSHOT, ID)
    assert until is not None
    client = _client(rgw_server)
    key = f"repo/snapshots/{ID}"
    soon = datetime.now(UTC) + timedelta(seconds=30)
    for mode in ("COMPLIANCE", "GOVERNANCE"):
        with pytest.raises(ClientError) as refused:
            client.put_object_retention(Bucket=bucket, Key=key, Retention={"Mode": mode, "RetainUntilDate": soon})
        assert _status(refused) == 403
    assert backend.retention(FileType.SNAPSHOT, ID) == until
    # the backend asked to "extend" to an earlier date keeps the later one, without an error
    backend.extend_retention(FileType.SNAPSHOT, ID, until - 600)
    assert backend.retention(FileType.SNAPSHOT, ID) == until
    backend.extend_retention(FileType.SNAPSHOT, ID, until + 600)
    extended = backend.retention(FileType.SNAPSHOT, ID)
    assert extended is not None and until + 599 <= extended <= until + 601
    client.close()
    backend.close()


def test_a_file_is_removed_with_all_its_versions_once_its_retention_passed(
    any_s3_server: S3Server, client: Any
) -> None:
    """A retention of 2 s, waited out: remove deletes every version by its id (a plain DELETE
    would leave them stored under a delete marker, for ever)."""
    bucket = _bucket()
    backend = _locked_backend(any_s3_server, bucket, "compliance", 2)
    backend.save(FileType.DATA, ID, b"pack")
    backend.save(FileType.DATA, ID, b"pack")  # saved twice (a retried upload): two versions
    key = f"repo/data/ab/{ID}"
    assert len(_versions(client, bucket, key)[0]) == 2
    until = backend.retention(FileType.DATA, ID)
    assert until is not None
    while time.time() <= until + 1:
        time.sleep(0.2)
    backend.remove(FileType.DATA, ID)
    assert _versions(client, bucket, key) == ([], [])
    with pytest.raises(NotFound):
        backend.remove(FileType.DATA, ID)
    backend.close()


def test_an_unlocked_repository_keeps_plain_deletes(any_s3_server: S3Server, client: Any) -> None:
    """Without Object Lock a versioned bucket is its owner's safety net: remove leaves the old
    versions to the bucket's lifecycle rules, as before."""
    bucket = _bucket()
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    backend = open_backend(any_s3_server.url("repo", bucket=bucket), **FAST_S3)
    backend.create()
    backend.save(FileType.DATA, ID, b"pack")
    backend.remove(FileType.DATA, ID)
    versions, markers = _versions(client, bucket, f"repo/data/ab/{ID}")
    assert len(versions) == 1 and len(markers) == 1
    backend.close()


def test_config_race_on_a_locked_bucket(any_s3_server: S3Server, client: Any) -> None:
    """Racing `init`s on an Object Lock bucket (RGW ignores If-None-Match there): the losers must
    still be able to take their versions back, so the config gets its retention only after its
    PUT has won, and only on the winning version."""
    bucket = _bucket()
    backend = _locked_backend(any_s3_server, bucket)
    won = _config_race(backend)
    assert won.count(True) == 1, won
    assert backend.load(FileType.CONFIG, "config") == b"config %d" % won.index(True)
    versions, markers = _versions(client, bucket, "repo/config")
    assert len(versions) == 1 and not markers, (versions, markers)
    assert client.head_object(Bucket=bucket, Key="repo/config")["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(UnderRetention):
        backend.remove(FileType.CONFIG, "config")
    with pytest.raises(AlreadyExists):
        backend.save(FileType.CONFIG, "config", b"late")
    backend.close()


def test_a_repository_asking_for_retention_in_a_plain_bucket_fails_clearly(any_s3_server: S3Server) -> None:
    bucket = _bucket()
    plain = open_backend(any_s3_server.url("repo", bucket=bucket), **FAST_S3)
    plain.create()
    plain.close()
    backend: Backend = open_backend(any_s3_server.url("repo", bucket=bucket), **FAST_S3)
    assert isinstance(backend, ObjectLock)
    backend.set_retention("compliance", HOUR)
    with pytest.raises(BackendError, match=r"refuses a retention date: it has no Object Lock"):
        backend.save(FileType.DATA, ID, b"pack")
    backend.close()


# ---------------------------------------------------------------- through the CLI

PASSWORD = "object lock"


class LockCli:
    """The real command line on a repository in `bucket`, as a user runs it."""

    def __init__(self, server: S3Server, bucket: str, base: Path) -> None:
        self.url = server.url("repo", bucket=bucket)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPFS_")}
        self.env.update(server.env, BACKUPFS_PASSWORD=PASSWORD, XDG_CACHE_HOME=str(base / "cache"), HOME=str(base))

    def run(self, *args: str | os.PathLike[str], code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "backupfs", "-r", self.url, *map(str, args)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
            check=False,
        )
        assert proc.returncode == code, f"{args}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
        return proc


def test_init_creates_a_bucket_with_object_lock(rgw_server: RGWServer, tmp_path: Path) -> None:
    bucket = _bucket()
    cli = LockCli(rgw_server, bucket, tmp_path)
    out = cli.run("init", "--object-lock", "3", "--object-lock-mode", "governance").stderr
    assert "Object Lock (governance)" in out and "3 days" in out
    client = _client(rgw_server)
    assert (
        client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    )
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 2  # the config and one key file
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE"
        left = head["ObjectLockRetainUntilDate"].timestamp() - time.time()
        assert (3 + 3) * 86400 - 120 < left <= (3 + 3) * 86400 + 1, key  # 3 days + a step of 3
    client.close()


@pytest.mark.parametrize("rule", [None, {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}])
def test_init_refuses_a_bucket_it_cannot_use(
    any_s3_server: S3Server, client: Any, tmp_path: Path, rule: dict[str, Any] | None
) -> None:
    """A bucket without Object Lock (it cannot be added later), or whose default retention would
    lock the lock files too: exit 2 with what to do, and nothing written."""
    bucket = _bucket()
    client.create_bucket(Bucket=bucket, **({"ObjectLockEnabledForBucket": True} if rule else {}))
    if rule:
        client.put_object_lock_configuration(
            Bucket=bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": rule}
        )
    err = LockCli(any_s3_server, bucket, tmp_path).run("init", "--object-lock", "30", code=2).stderr
    assert len(err.strip().splitlines()) == 1, err
    if rule:
        assert "default retention (governance, 1 days)" in err and "lock files" in err
    else:
        assert "has no Object Lock" in err and "--object-lock-enabled-for-bucket" in err
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)


def test_init_refuses_object_lock_where_there_is_none(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPFS_")}
    env.update(BACKUPFS_PASSWORD=PASSWORD, HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "backupfs", "-r", str(tmp_path / "repo"), "init", "--object-lock", "30"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "only s3: repositories" in proc.stderr
    assert not (tmp_path / "repo" / "config").exists()


def _all_keys(client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def _until(client: Any, bucket: str, key: str) -> float:
    return float(client.head_object(Bucket=bucket, Key=key)["ObjectLockRetainUntilDate"].timestamp())


def _pass_time(client: Any, bucket: str, until: float) -> None:
    """What the passing days would do to the locks: every object's retention made to end at
    `until`. Governance mode, shortened with the bypass permission (the test's keys have it;
    backupfs never uses it), is the only way to test across days without waiting them."""
    when = datetime.fromtimestamp(until, UTC)
    for key in _all_keys(client, bucket):
        if key.startswith("repo/locks/"):
            continue
        client.put_object_retention(
            Bucket=bucket,
            Key=key,
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": when},
            BypassGovernanceRetention=True,
        )


def _open_repo(server: S3Server, bucket: str) -> Repository:
    repo = Repository.open(open_backend(server.url("repo", bucket=bucket), **FAST_S3), PASSWORD.encode())
    repo.load_index()
    return repo


def _pack_of(repo: Repository, content: bytes) -> str:
    loc = repo.index.lookup(repo.blob_id(content))
    assert loc is not None
    return f"repo/data/{loc.pack_id.hex()[:2]}/{loc.pack_id.hex()}"


def test_a_backup_extends_what_its_snapshot_needs_and_nothing_else(rgw_server: RGWServer, tmp_path: Path) -> None:
    bucket = _bucket()
    cli = LockCli(rgw_server, bucket, tmp_path)
    cli.run("init", "--object-lock", "2", "--object-lock-mode", "governance")
    src = tmp_path / "src"
    src.mkdir()
    kept, dropped = os.urandom(300 << 10), os.urandom(300 << 10)  # one chunk each
    (src / "kept").write_bytes(kept)
    cli.run("backup", src)
    (src / "dropped").write_bytes(dropped)
    cli.run("backup", src)  # "dropped" goes into a pack of its own
    (src / "dropped").unlink()
    cli.run("backup", src)
    client = _client(rgw_server)
    soon = time.time() + HOUR
    _pass_time(client, bucket, soon)  # 2 days later, as the locks see it
    before = set(_all_keys(client, bucket))

    out = cli.run("--no-cache", "backup", src, "--json").stdout  # --no-cache: no dates on record
    stats = json.loads(out.splitlines()[-1])
    locked = stats["object_lock"]
    assert locked["extended"] > 0 and 0 < locked["checked"] <= locked["files"]  # dates it did not write: read
    repo = _open_repo(rgw_server, bucket)
    _sid, snap = repo.find_snapshot("latest")
    promised = snap.time_ns / 1e9 + 2 * 86400
    kept_pack, dropped_pack = _pack_of(repo, kept), _pack_of(repo, dropped)
    assert kept_pack != dropped_pack
    assert _until(client, bucket, kept_pack) >= promised
    assert abs(_until(client, bucket, dropped_pack) - soon) < 2
    needed = {f"repo/{layout.path(FileType.DATA, p.hex())}" for p in repo.packs_of_tree(snap.tree)}
    needed |= {k for k in before if k.startswith(("repo/keys/", "repo/config"))}
    for name, index in repo.index_files().items():
        if any(f"repo/{layout.path(FileType.DATA, p.hex())}" in needed for p in index.packs):
            needed.add(f"repo/index/{name}")
    for key in before:
        until = _until(client, bucket, key)
        if key in needed:
            assert until >= promised, key
        else:
            assert until < soon + 2, key  # the older snapshots' own files: left to expire
    repo.close()
    client.close()


def _stored(client: Any, bucket: str) -> dict[tuple[str, str], bytes]:
    """Every version of every object, hidden or not: what the storage really holds."""
    out = {}
    resp = client.list_object_versions(Bucket=bucket)
    assert not resp.get("IsTruncated")
    for v in resp.get("Versions", ()):
        if not v["Key"].startswith("repo/locks/"):
            body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
            out[(v["Key"], v["VersionId"])] = body
    return out


def _hidden(client: Any, bucket: str) -> tuple[int, int]:
    """(versions that are not the visible object, delete markers): bytes stored but not in use."""
    resp = client.list_object_versions(Bucket=bucket)
    return (
        sum(1 for v in resp.get("Versions", ()) if not v["IsLatest"]),
        len(resp.get("DeleteMarkers", ())),
    )


def test_forget_and_prune_wait_for_the_retention_then_reclaim_the_space(rgw_server: RGWServer, tmp_path: Path) -> None:
    bucket = _bucket()
    cli = LockCli(rgw_server, bucket, tmp_path)
    cli.run("init", "--object-lock", "1", "--object-lock-mode", "governance")
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept").write_bytes(os.urandom(300 << 10))
    (src / "gone").write_bytes(os.urandom(300 << 10))
    cli.run("backup", src)
    (src / "gone").unlink()
    cli.run("backup", src)
    client = _client(rgw_server)
    stored = _stored(client, bucket)

    out = cli.run("forget", "--keep-last", "1", "--prune").stdout
    assert "removed 0 of 1 snapshots (1 of them under Object Lock: kept for now)" in out, out
    assert re.search(r"^1 snapshots kept: under Object Lock retention, deletable from \d{4}-", out, re.M), out
    assert len(json.loads(cli.run("snapshots", "--json").stdout)) == 2
    assert _stored(client, bucket) == stored  # nothing deleted, nothing hidden

    until = time.time() + 2
    _pass_time(client, bucket, until)  # the day has passed, as the locks see it
    while time.time() <= until + 1:
        time.sleep(0.2)
    # --no-cache: this host's record of the dates it set would (rightly) keep them a day more;
    # only a user allowed to bypass governance retention can shorten it, as the test just did
    out = cli.run("--no-cache", "forget", "--keep-last", "1", "--prune").stdout
    assert "removed 1 snapshots, kept 1" in out, out
    assert "Object Lock" not in out, out
    assert len(json.loads(cli.run("snapshots", "--json").stdout)) == 1
    assert _hidden(client, bucket) == (0, 0)  # deleted for good: no version left behind
    gone = {key for key, _v in stored} - set(_all_keys(client, bucket))
    assert any(k.startswith("repo/data/") for k in gone) and any(k.startswith("repo/snapshots/") for k in gone)
    cli.run("check", "--read-data")
    cli.run("restore", "latest", "--target", tmp_path / "restored")
    assert (tmp_path / "restored" / str(src).lstrip("/") / "kept").read_bytes() == (src / "kept").read_bytes()
    client.close()


def test_a_superseding_index_cannot_make_prune_delete_locked_data(rgw_server: RGWServer, tmp_path: Path) -> None:
    """Issue 10's attack (tests/supersede.py) on a COMPLIANCE-locked repository, then the
    administrator's routine forget + prune: every real object keeps every byte."""
    bucket = _bucket()
    cli = LockCli(rgw_server, bucket, tmp_path)
    cli.run("init", "--object-lock", "3")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(200 << 10))
        cli.run("backup", src)
    client = _client(rgw_server)
    stored = _stored(client, bucket)
    real_index = [k.rsplit("/", 1)[1] for k, _v in stored if k.startswith("repo/index/")]

    repo = _open_repo(rgw_server, bucket)  # the attacker: the password and the bucket's keys
    forged = supersede_everything(repo)
    repo.close()
    out = cli.run("forget", "--keep-last", "5", "--prune").stdout
    # the real packs are data in use that no index lists: listed again, never deleted (architecture.md
    # 5); the forged pack is garbage, but locked
    assert re.search(r"^reindexed: +\d+ packs in no index hold data in use", out, re.M), out
    assert re.search(r"^locked: +1 packs with nothing in use, .* kept: under Object Lock retention", out, re.M), out
    after = _stored(client, bucket)
    for version, body in stored.items():
        assert after.get(version) == body, f"{version[0]} was lost"

    repo = _open_repo(rgw_server, bucket)  # the way back
    undo(repo, real_index, forged)
    repo.close()
    cli.run("check", "--read-data")
    cli.run("restore", "latest", "--target", tmp_path / "restored")
    for i in range(3):
        assert (tmp_path / "restored" / str(src).lstrip("/") / f"f{i}").read_bytes() == (src / f"f{i}").read_bytes()
    client.close()


def test_a_changed_password_leaves_the_old_key_until_its_retention_passes(
    rgw_server: RGWServer, tmp_path: Path
) -> None:
    cli = LockCli(rgw_server, _bucket(), tmp_path)
    cli.run("init", "--object-lock", "1")
    (tmp_path / "new").write_text("the new password\n")
    err = cli.run("key", "passwd", "--new-password-file", tmp_path / "new", code=1).stderr
    assert re.search(r"saved new key [0-9a-f]{8}, but the old key [0-9a-f]{8} stays: it is under Object Lock", err), err
    assert "the old password opens the repository too" in err
    cli.run("snapshots")  # the old password still works ...
    cli.env["BACKUPFS_PASSWORD"] = "the new password"
    cli.run("snapshots")  # ... and so does the new one
