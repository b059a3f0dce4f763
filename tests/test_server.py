"""`backupfs serve` and the rest: backend, against a real server process on 127.0.0.1.

The append-only tests talk raw HTTP (not through RestBackend), because an attacker is not bound
to our client: every request a compromised client could send is tried, and the repository's
files are compared byte for byte before and after.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from support.cli import CLI
from support.rest_server import RestServer
from support.richtree import make_rich_tree, rsync_diff

from backupfs.backends.base import BackendInfo, FileType
from backupfs.backends.local import LocalBackend
from backupfs.backends.registry import open_backend
from backupfs.backends.rest import RestBackend
from backupfs.crypto import file_id
from backupfs.errors import AlreadyExists, BackendError, NotFound, TransientBackendError
from backupfs.format.snapshot import Snapshot
from backupfs.repository.repo import Repository
from backupfs.server.routes import parse_range, parse_target

FAST_KDF = (1, 8192)
FAST_RETRY = ("-o", "retry_attempts=2", "-o", "retry_base_delay=0.05")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestServer]:
    with RestServer(tmp_path_factory.mktemp("srv")) as srv:
        yield srv


def _fresh(server: RestServer, name: str) -> RestBackend:
    backend = RestBackend(server.url(name))
    backend.create()
    return backend


def _blob(data: bytes) -> tuple[str, bytes]:
    return file_id(data), data


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class Http:
    """Raw HTTP/1.1 requests, the path sent byte for byte (no client-side normalisation of `..`)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def __call__(
        self, method: str, path: str, body: bytes = b"", auth: tuple[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage]:
        headers = {}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                response.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()  # the server may close after an error answer: one fresh connection
                if attempt == 2:
                    raise
                continue
            if response.will_close:
                self.close()
            return response.status, response.headers
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ---------------------------------------------------------------------------- pure parsing


def test_parse_target_is_strict() -> None:
    name = "ab" * 32
    assert parse_target(f"/data/{name}".encode()) is not None
    assert parse_target(f"/alice/r1/keys/{name}".encode()) is not None
    assert parse_target(b"/config") is not None and parse_target(b"/snapshots/") is not None
    for bad in (
        b"/data/../config",
        b"/%2e%2e/config",
        b"/data/%2e%2e/config",
        b"//config",
        b"/data//" + name.encode(),
        b"/./config",
        b"/data/ab/" + name.encode(),
        b"/Data/" + name.encode(),
        b"/unknown/" + name.encode(),
        b"/data/" + name.upper().encode(),
        b"/data/" + name.encode() + b"0",
        b"/data/" + ("ab" * 4000).encode(),
        b"/data/" + name.encode() + b"/..",
        b"/data%2f" + name.encode(),
        b"/..\\config",
        b"/data/.tmp",
        b"/.hidden/config",
        b"/data/config",
        b"/a/b/c/d/e/f/g/h/i/config",
        b"config",
        b"/r\x00/config",
    ):
        assert parse_target(bad) is None, bad


def test_parse_range() -> None:
    assert parse_range(b"bytes=0-9", 100) == (0, 10)
    assert parse_range(b"bytes=90-", 100) == (90, 100)
    assert parse_range(b"bytes=-10", 100) == (90, 100)
    assert parse_range(b"bytes=95-200", 100) == (95, 100)
    assert parse_range(b"bytes=100-", 100) is None
    assert parse_range(b"bytes=5-2", 100) == "bad" and parse_range(b"items=1-2", 100) == "bad"


# ---------------------------------------------------------------------------- the Backend contract


def test_backend_contract(server: RestServer) -> None:
    b = _fresh(server, "contract")
    b.create()  # no config yet: creating again is harmless
    assert not b.exists()
    b.save(FileType.CONFIG, "config", b"config-bytes")
    assert b.exists()
    with pytest.raises(AlreadyExists):
        b.save(FileType.CONFIG, "config", b"other")
    with pytest.raises(AlreadyExists):
        b.create()
    assert b.load(FileType.CONFIG, "config") == b"config-bytes"

    name, data = _blob(os.urandom(3 << 20))
    b.save(FileType.DATA, name, memoryview(data))
    b.save(FileType.DATA, name, data)  # saving again replaces (same name, same content)
    assert b.load(FileType.DATA, name) == data
    assert b.load(FileType.DATA, name, 1000, 5000) == data[1000:6000]
    assert b.load(FileType.DATA, name, len(data) - 7) == data[-7:]
    assert b.load(FileType.DATA, name, len(data)) == b""
    assert b.load(FileType.DATA, name, 5, 0) == b""
    with pytest.raises(BackendError, match="short read"):
        b.load(FileType.DATA, name, len(data) - 10, 20)
    with pytest.raises(BackendError, match="short read"):
        b.load(FileType.DATA, name, len(data) + 10, 20)
    assert b.stat(FileType.DATA, name) == len(data)
    assert list(b.list(FileType.DATA)) == [(name, len(data))]
    assert list(b.list(FileType.CONFIG)) == [("config", 12)]
    assert list(b.list(FileType.INDEX)) == []

    missing = "cd" * 32
    for call in (
        lambda: b.load(FileType.DATA, missing),
        lambda: b.load(FileType.DATA, missing, 0, 10),
        lambda: b.stat(FileType.INDEX, missing),
        lambda: b.remove(FileType.SNAPSHOT, missing),
    ):
        with pytest.raises(NotFound):
            call()
    b.remove(FileType.DATA, name)
    with pytest.raises(NotFound):
        b.remove(FileType.DATA, name)
    assert list(b.list(FileType.DATA)) == []
    b.close()


def test_concurrent_use_from_threads(server: RestServer) -> None:
    b = _fresh(server, "threads")
    blobs = [_blob(os.urandom(200_000 + i)) for i in range(24)]
    errors: list[BaseException] = []

    def work(part: list[tuple[str, bytes]]) -> None:
        try:
            for name, data in part:
                b.save(FileType.INDEX, name, data)
                assert b.load(FileType.INDEX, name, 100, 1000) == data[100:1100]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(blobs[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(b.list(FileType.INDEX)) == sorted((n, len(d)) for n, d in blobs)
    b.close()


def test_broken_upload_never_lands(server: RestServer) -> None:
    b = _fresh(server, "broken")
    name, data = _blob(os.urandom(100_000))
    http = Http(server.port)
    assert http("POST", f"/broken/data/{name}", data[:-1])[0] == 400  # truncated
    assert http("POST", f"/broken/data/{name}", data[:-1] + b"\0")[0] == 400  # altered
    http.close()
    assert list(b.list(FileType.DATA)) == []
    assert [p for p in (server.path / "broken").rglob("*") if p.is_file()] == []  # no temporaries left
    b.close()


def test_layout_is_the_local_backends(server: RestServer) -> None:
    """A repository made locally is served as is, and one made through the server opens locally."""
    local = Repository.init(LocalBackend(str(server.path / "made-locally")), b"pw", kdf=FAST_KDF)
    local.close()
    remote = Repository.open(RestBackend(server.url("made-locally")), b"pw")
    assert remote.header.repo_id == local.header.repo_id
    remote.close()

    made_remote = Repository.init(RestBackend(server.url("made-remotely")), b"pw", kdf=FAST_KDF)
    blob_id, _ = made_remote.save_blob(0, os.urandom(50_000))
    made_remote.flush()
    made_remote.close()
    reopened = Repository.open(LocalBackend(str(server.path / "made-remotely")), b"pw")
    reopened.load_index()
    assert reopened.has_blob(blob_id)
    reopened.close()


def test_dead_server_is_a_transient_error(tmp_path: Path) -> None:
    srv = RestServer(tmp_path / "srv").start()
    b = _fresh(srv, "r")
    srv.kill()
    with pytest.raises(TransientBackendError, match="connection refused"):
        list(b.list(FileType.DATA))
    b.close()


# ---------------------------------------------------------------------------- append-only


def _populated_repo(root: Path) -> None:
    """One file of every type: config, key, pack, index, snapshot, lock."""
    repo = Repository.init(LocalBackend(str(root)), b"pw", kdf=FAST_KDF)
    tree = repo.save_tree([])
    repo.flush()
    repo.save_snapshot(Snapshot(time_ns=1, host="h", user="u", paths=["/"], tree=tree))
    repo.backend.save(FileType.LOCK, *_blob(b"a stale lock"))
    repo.close()


def _attacks(files: dict[str, str]) -> Iterator[tuple[str, str, bytes]]:
    """(method, path, body) for every way to destroy or replace a file we could think of."""
    junk = b"ransom note"
    for rel in files:
        parts = rel.split("/")
        name = parts[-1]
        api = "config" if rel == "config" else f"{parts[0]}/{name}"
        for method in ("DELETE", "PUT", "PATCH", "MOVE", "COPY", "OPTIONS", "TRACE", "PROPPATCH"):
            yield method, f"/{api}", junk
        yield "POST", f"/{api}", junk  # overwrite with other content
        yield "POST", f"/{api}", b""  # truncate
        yield "DELETE", f"/{api}?create=true", b""
        if rel != "config":
            yield "DELETE", f"/{rel}", b""  # the on-disk path of a pack (data/ab/NAME)
            yield "POST", f"/{rel}", junk
            yield "DELETE", f"/{parts[0]}/./{name}", b""
            yield "DELETE", f"/{parts[0]}//{name}", b""
            yield "DELETE", f"/{parts[0]}/{name}/", b""
            yield "DELETE", f"/{parts[0]}/%2e%2e/{parts[0]}/{name}", b""
            yield "DELETE", f"/{parts[0]}/{name.upper()}", b""
            yield "DELETE", f"/{parts[0]}/{name}%00", b""
            yield "DELETE", f"/{parts[0]}/.{name}", b""
            yield "DELETE", f"/{parts[0]}%2f{name}", b""
            yield "POST", f"/{parts[0]}/{name}/..", junk
    for path in (
        "/data/../config",
        "/data/../../etc/passwd",
        "/keys/./../config",
        "/%2e%2e/config",
        "/%2E%2E/config",
        "/data/%2e%2e/config",
        "//config",
        "/./config",
        "/../config",
        "/config/",
        "/config/..",
        "/keys/../config",
        "/locks/../config",
        "/locks/%2e%2e/config",
        "/locks/..%2fconfig",
        "/bogus/" + "ab" * 32,
        "/data/" + "ab" * 3000,
        "/data/" + "ab" * 32 + "/" + "ab" * 32,
        "/",
        "/data/",
        "/keys",
        "/snapshots",
    ):
        for method in ("DELETE", "POST", "PUT"):
            yield method, path, junk
    yield "DELETE", "/", b""
    yield "POST", "/?create=true&x=../", b""


def test_append_only_refuses_every_destructive_request(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    _populated_repo(root)
    before = tree_digest(root)
    kinds = {rel.split("/")[0] for rel in before}
    assert kinds == {"config", "keys", "data", "index", "snapshots", "locks"}
    protected = {rel: h for rel, h in before.items() if not rel.startswith("locks/")}
    with RestServer(root, "--append-only") as srv:
        http = Http(srv.port)
        allowed = []
        for method, path, body in _attacks(protected):
            status = http(method, path, body)[0]
            assert status < 500, (method, path, status)  # refused on purpose, not by a crash
            if status < 400:
                allowed.append((method, path, status))
        assert allowed == [("POST", "/?create=true&x=../", 200)], allowed  # creating is idempotent
        # re-sending a file with its exact content succeeds (a retried upload) and changes nothing
        for rel in protected:
            if rel != "config":
                api = rel.split("/")[0] + "/" + rel.split("/")[-1]
                assert http("POST", f"/{api}", (root / rel).read_bytes())[0] == 200
        # and new files are welcome
        name, data = _blob(os.urandom(1000))
        assert http("POST", f"/index/{name}", data)[0] == 200
        # locks come and go
        lock_name, lock_data = _blob(b"a lock")
        assert http("POST", f"/locks/{lock_name}", lock_data)[0] == 200
        assert http("DELETE", f"/locks/{lock_name}")[0] == 200
        for rel in before:
            if rel.startswith("locks/"):
                assert http("DELETE", f"/{rel}")[0] == 200
        http.close()
    after = tree_digest(root)
    assert {k: v for k, v in after.items() if k != f"index/{name}"} == protected
    assert list(after) == sorted([*protected, f"index/{name}"])


def test_append_only_through_the_client(tmp_path: Path) -> None:
    """A repository can be created, written and read through an append-only server; deletes fail."""
    with RestServer(tmp_path / "srv", "--append-only") as srv:
        repo = Repository.init(RestBackend(srv.url("r")), b"pw", kdf=FAST_KDF)
        assert repo.backend.info().append_only  # announced by every answer
        lock = repo.lock()
        repo.save_blob(0, os.urandom(10_000))
        repo.flush()
        name = next(iter(repo.backend.list(FileType.DATA)))[0]
        with pytest.raises(BackendError, match=r"append-only: deleting data files is not allowed \(run prune"):
            repo.backend.remove(FileType.DATA, name)
        with pytest.raises(AlreadyExists):
            repo.backend.save(FileType.CONFIG, "config", b"x")
        lock.release()
        assert list(repo.backend.list(FileType.LOCK)) == []
        repo.close()


def test_the_client_learns_append_only_from_the_server(tmp_path: Path) -> None:
    """info() asks the server when nothing else has yet: a fresh client knows before any delete."""
    for args in ((), ("--append-only",)):
        with RestServer(tmp_path / f"srv{len(args)}", *args) as srv:
            for repo in ("none-here", "r"):
                if repo == "r":
                    RestBackend(srv.url(repo)).create()
                fresh = open_backend(srv.url(repo))  # as every command gets it: wrapped in RetryBackend
                assert fresh.info() == BackendInfo(local=False, append_only=bool(args), sweeps_temporaries=False, reads_in_flight=16)
                fresh.close()


# ---------------------------------------------------------------------------- authentication


def _htpasswd(path: Path, users: dict[str, str]) -> Path:
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}" for u, p in users.items()]
    lines.append("carol:{SHA}" + base64.b64encode(hashlib.sha1(b"carols-pw").digest()).decode())
    apr1 = subprocess.run(["openssl", "passwd", "-apr1", "daves-pw"], capture_output=True, check=True).stdout
    lines.append("dave:" + apr1.decode().strip())  # what `htpasswd` writes by default
    path.write_text("\n".join(lines) + "\n")
    return path


def test_authentication_and_private_repos(tmp_path: Path) -> None:
    htpasswd = _htpasswd(tmp_path / "htpasswd", {"alice": "alices-pw", "bob": "bobs-pw"})
    with RestServer(tmp_path / "srv", "--htpasswd", str(htpasswd), "--private-repos") as srv:
        name = "ab" * 32
        http = Http(srv.port)
        for method, path in (
            ("GET", "/alice/r/config"),
            ("HEAD", "/alice/r/config"),
            ("GET", "/alice/r/data/"),
            ("POST", f"/alice/r/data/{name}"),
            ("DELETE", f"/alice/r/locks/{name}"),
            ("POST", "/alice/r/?create=true"),
            ("GET", "/../etc/passwd"),
        ):
            assert http(method, path)[0] == 401
            assert http(method, path, auth=("alice", "wrong"))[0] == 401
            assert http(method, path, auth=("mallory", "x"))[0] == 401
        assert "basic" in http("GET", "/alice/r/config")[1]["www-authenticate"].lower()
        http.close()

        alice = Repository.init(RestBackend(srv.url("alice/r", "alice", "alices-pw")), b"pw", kdf=FAST_KDF)
        alice.save_blob(0, b"alice's secret")
        alice.flush()
        alice.close()
        for url in (
            srv.url("alice/r", "bob", "bobs-pw"),
            srv.url("alice/r", "carol", "carols-pw"),
            srv.url("alice/r", "dave", "daves-pw"),
        ):
            other = RestBackend(url)
            with pytest.raises(BackendError, match="403"):
                other.exists()
            with pytest.raises(BackendError, match="403"):
                list(other.list(FileType.DATA))
            other.close()
        with RestBackend(srv.url("", "bob", "bobs-pw")) as root, pytest.raises(BackendError, match="403"):
            root.create()  # the root is nobody's
        with (
            RestBackend(srv.url("alice/r", "alice", "bobs-pw")) as wrong,
            pytest.raises(BackendError, match="authentication failed"),
        ):
            wrong.exists()
        # credentials from the environment
        os.environ["BACKUPFS_REST_USERNAME"], os.environ["BACKUPFS_REST_PASSWORD"] = "bob", "bobs-pw"
        try:
            env_backend = RestBackend(srv.url("bob/r"))
            env_backend.create()
            assert not env_backend.exists()
            env_backend.close()
        finally:
            del os.environ["BACKUPFS_REST_USERNAME"], os.environ["BACKUPFS_REST_PASSWORD"]
        with RestBackend(srv.url("alice/r", "alice", "password")) as redacted:
            assert "password" not in redacted.location


# ---------------------------------------------------------------------------- TLS


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with RestServer(tmp_path / "srv", "--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        assert srv.url().startswith("rest:https://")
        untrusted = RestBackend(srv.url("r"))
        with pytest.raises(BackendError, match="certificate verification failed") as info:
            untrusted.exists()
        assert not isinstance(info.value, TransientBackendError)
        untrusted.close()
        trusted = RestBackend(srv.url("r"), cacert=str(cert))
        trusted.create()
        name, data = _blob(os.urandom(100_000))
        trusted.save(FileType.DATA, name, data)
        assert trusted.load(FileType.DATA, name, 10, 10) == data[10:20]
        trusted.close()


# ---------------------------------------------------------------------------- through the real CLI


def test_backup_and_restore_through_rest(tmp_path: Path, cli_env: dict[str, str]) -> None:
    rich = make_rich_tree(tmp_path / "src")
    src: Path = rich["root"]
    with RestServer(tmp_path / "srv") as srv:
        cli = CLI(srv.url("repo"), cli_env)  # type: ignore[arg-type]
        cli("init")
        cli("backup", src)
        target = tmp_path / "target"
        cli("restore", "latest", "--target", target, "--verify")
        assert rsync_diff(src, target / str(src).lstrip("/")) == ""
    # what the server wrote is a plain local repository
    CLI(tmp_path / "srv" / "repo", cli_env)("check", "--read-data")


def test_prune_through_an_append_only_server_is_refused(tmp_path: Path, cli_env: dict[str, str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    local = CLI(tmp_path / "srv" / "repo", cli_env)  # the administrator, on the server itself
    local("init")
    (src / "a").write_bytes(os.urandom(300_000))
    first = json.loads(local("backup", src, "--json").stdout.splitlines()[-1])["snapshot_id"]
    (src / "a").write_bytes(os.urandom(300_000))
    local("backup", src)
    local("forget", first)  # leaves unused data for prune to delete
    before = tree_digest(local.repo)
    with RestServer(tmp_path / "srv", "--append-only") as srv:
        client = CLI(srv.url("repo"), cli_env)  # type: ignore[arg-type]
        for args in (
            ("prune",),
            ("forget", "latest"),
            ("forget", "--keep-last", "1", "--prune"),
            ("key", "passwd", "--new-password-file", "/dev/null"),
        ):
            # refused at once: before the password (it would be asked for here), the lock and planning
            proc = client(*args, check=False, env={"BACKUPFS_PASSWORD": ""})
            lines = proc.stderr.decode().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr)
            assert "append-only" in lines[0] and "on the server" in lines[0], lines
            assert proc.stdout == b""
        assert client("prune", "--dry-run").returncode == 0  # changes nothing: fine
        client("backup", src)  # what an append-only client is for still works
    after = tree_digest(local.repo)
    assert {k: v for k, v in before.items() if not k.startswith("locks/")}.items() <= after.items()
    local("prune")  # on the server side it is fine (and checks the repository first)


def test_server_killed_mid_backup(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """The backup fails with one clear line; the repository stays consistent; the next run re-uses packs."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}").write_bytes(os.urandom(4 << 20))
    srv = RestServer(tmp_path / "srv").start()
    cli = CLI(srv.url("repo"), cli_env)  # type: ignore[arg-type]
    cli("init", "--pack-size", "1")
    backup = subprocess.Popen(
        # two attempts, short pauses: a real outage would be ridden out for ~15 s (docs/backends.md)
        [sys.executable, "-m", "backupfs", "-r", srv.url("repo"), *FAST_RETRY, "backup", str(src)],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    packs = tmp_path / "srv" / "repo" / "data"
    deadline = time.monotonic() + 120
    while sum(1 for p in packs.rglob("*") if p.is_file() and not p.name.startswith(".")) < 8:
        assert backup.poll() is None and time.monotonic() < deadline, "backup ended before the server was killed"
        time.sleep(0.005)
    srv.kill()
    _out, err = backup.communicate(timeout=180)
    lines = err.decode().strip().splitlines()
    assert backup.returncode == 1 and "Traceback" not in err.decode(), err.decode()
    assert lines[-1].startswith("backupfs: ") and "connection refused" in lines[-1], lines

    server_side = CLI(tmp_path / "srv" / "repo", cli_env)
    server_side("check")  # consistent: at most packs not yet indexed
    srv.start(port=srv.port)
    try:
        summary = json.loads(cli("backup", src, "--json").stdout.splitlines()[-1])
    finally:
        srv.stop()
    assert summary["data_added"] <= (24 - 8) << 20, summary  # the packs uploaded before are re-used
    server_side("check", "--read-data")
