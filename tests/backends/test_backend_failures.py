"""Failures on real servers: connections cut mid-upload, servers stopped and restarted, refused
host keys and credentials. Every failure must surface as a BackendError of the right kind, fast,
and the same backend object must work again once the server is back."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from support.servers import (
    FAST,
    FAST_S3,
    FAST_SFTP,
    MotoServer,
    RGWServer,
    SSHDServer,
    TcpProxy,
    free_port,
    write_ed25519_key,
)

from backupfs.backends.base import Backend, FileType
from backupfs.backends.counting import innermost
from backupfs.backends.registry import open_backend
from backupfs.backends.retry import RetryBackend
from backupfs.backends.sftp.backend import SFTPBackend
from backupfs.errors import AlreadyExists, BackendError, NotFound, TransientBackendError

T = TypeVar("T")
MiB = 1024 * 1024
NO_RETRY = {"retry_attempts": 1}


@pytest.fixture(params=["openssh", "paramiko"])
def transport(request: pytest.FixtureRequest) -> dict[str, str]:
    """Each SFTP transport in turn: the system's ssh client, then paramiko."""
    return {"sftp_transport": request.param}


def file_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def within(seconds: float, fn: Callable[[], T]) -> T:
    """Run fn, failing the test if it takes longer than `seconds` (a hang, not an error)."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(("ok", fn()))
        except BaseException as exc:
            result.append(("err", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"call still running after {seconds} s"
    kind, value = result[0]
    if kind == "err":
        raise value
    return cast(T, value)


def patient(backend: Backend) -> RetryBackend:
    """The same backend with a retry budget longer than a short outage."""
    return RetryBackend(cast(RetryBackend, backend).inner, attempts=40, base_delay=0.1, max_delay=0.5)


# --- connections cut in the middle of an upload ---


def test_sftp_connection_cut_mid_upload(sshd_server: SSHDServer, transport: dict[str, str]) -> None:
    name = f"cut-{uuid.uuid4().hex[:8]}"
    direct = open_backend(sshd_server.url(name), **sshd_server.options, **FAST_SFTP, **transport)
    direct.create()
    data = os.urandom(4 * MiB)
    fid = file_id(data)
    with TcpProxy(sshd_server.port) as proxy:
        sshd_server.trust_port(proxy.port)
        cut = open_backend(
            sshd_server.url(name, port=proxy.port), **sshd_server.options, **{**FAST_SFTP, **NO_RETRY, **transport}
        )
        cut.save(FileType.KEY, "cd" * 32, b"connects before the cut")
        proxy.cut_after(MiB)
        with pytest.raises(TransientBackendError):
            within(30, lambda: cut.save(FileType.DATA, fid, data))
        with pytest.raises(NotFound):
            direct.load(FileType.DATA, fid)
        assert fid not in dict(direct.list(FileType.DATA))
        # the partial upload exists, under a temporary name only
        partial = list((sshd_server.root / name / "data" / fid[:2]).iterdir())
        assert len(partial) == 1 and ".tmp-" in partial[0].name
        assert partial[0].stat().st_size < len(data)
        # the same backend object reconnects on its next use
        cut.save(FileType.DATA, fid, data)
        assert direct.load(FileType.DATA, fid) == data
        assert direct.remove_stale_temporaries(0) == 1
        cut.close()
    direct.close()


def test_s3_connection_cut_mid_upload(any_s3_server: MotoServer | RGWServer) -> None:
    name = f"cut-{uuid.uuid4().hex[:8]}"
    direct = open_backend(any_s3_server.url(name), **FAST_S3)
    direct.create()
    data = os.urandom(4 * MiB)
    fid = file_id(data)
    with TcpProxy(any_s3_server.port) as proxy:
        url = f"s3:http://127.0.0.1:{proxy.port}/backupfs-test/{name}"
        cut = open_backend(url, **{**FAST_S3, **NO_RETRY})
        cut.save(FileType.KEY, "cd" * 32, b"connects before the cut")
        proxy.cut_after(MiB)
        with pytest.raises(TransientBackendError):
            within(30, lambda: cut.save(FileType.DATA, fid, data))
        with pytest.raises(NotFound):
            direct.load(FileType.DATA, fid)
        assert fid not in dict(direct.list(FileType.DATA))
        cut.save(FileType.DATA, fid, data)
        assert direct.load(FileType.DATA, fid) == data
        cut.close()
    direct.close()


# --- servers stopped and restarted ---


def _all_ops_fail_transiently(backend: Backend, name: str) -> None:
    ops: list[Callable[[], object]] = [
        lambda: backend.load(FileType.DATA, name),
        lambda: backend.load(FileType.DATA, name, 10, 10),
        lambda: backend.save(FileType.INDEX, "ab" * 32, b"index"),
        lambda: backend.stat(FileType.DATA, name),
        lambda: list(backend.list(FileType.DATA)),
        lambda: backend.remove(FileType.DATA, name),
        backend.exists,
    ]
    for op in ops:
        with pytest.raises(TransientBackendError):
            within(30, op)


def _load_while_server_stops(backend: Backend, name: str, stop: Callable[[], None]) -> None:
    """A thread loading in a loop sees a TransientBackendError once the server goes away."""
    first = threading.Event()
    outcome: list[BaseException] = []

    def loop() -> None:
        try:
            while True:
                backend.load(FileType.DATA, name)
                first.set()
        except BaseException as exc:
            outcome.append(exc)
            first.set()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    assert first.wait(30)
    stop()
    thread.join(30)
    assert not thread.is_alive(), "load hung after the server stopped"
    assert len(outcome) == 1 and isinstance(outcome[0], TransientBackendError), outcome


def test_sftp_server_stop_and_restart(private_sshd: SSHDServer, transport: dict[str, str]) -> None:
    backend = open_backend(private_sshd.url("repo"), **private_sshd.options, **FAST_SFTP, **transport)
    backend.create()
    data = os.urandom(4 * MiB)
    name = file_id(data)
    backend.save(FileType.DATA, name, data)

    _load_while_server_stops(backend, name, private_sshd.stop)
    _all_ops_fail_transiently(backend, name)
    # An outage shorter than the retry budget never reaches the caller...
    restart = threading.Timer(0.5, private_sshd.start)
    restart.start()
    assert within(30, lambda: patient(backend).load(FileType.DATA, name)) == data
    restart.join()
    # ...and the backend object itself is connected again.
    backend.save(FileType.INDEX, "ab" * 32, b"index")
    assert backend.load(FileType.DATA, name, 100, 50) == data[100:150]
    backend.close()


def test_s3_server_stop_and_restart(private_s3: MotoServer) -> None:
    backend = open_backend(private_s3.url("repo"), **FAST_S3)
    backend.create()
    data = os.urandom(4 * MiB)
    name = file_id(data)
    backend.save(FileType.DATA, name, data)

    _load_while_server_stops(backend, name, private_s3.stop)
    _all_ops_fail_transiently(backend, name)
    restart = threading.Timer(0.2, private_s3.start)
    restart.start()
    # moto keeps nothing across a restart: start the repository over, through the outage
    within(60, patient(backend).create)
    restart.join()
    backend.save(FileType.DATA, name, data)
    assert backend.load(FileType.DATA, name, 100, 50) == data[100:150]
    backend.close()


# --- servers with fewer features ---


def test_sftp_server_with_few_sessions(tmp_path: Path) -> None:
    """A server allowing fewer sessions (channels of one paramiko connection) than sftp_connections:
    the pool shrinks, nothing fails."""
    with SSHDServer(tmp_path, max_sessions=2) as server:
        backend = open_backend(
            server.url("repo"), **server.options, **FAST_SFTP, sftp_connections=8, sftp_transport="paramiko"
        )
        backend.create()
        blobs = [os.urandom(300_000) for _ in range(16)]

        def roundtrip(data: bytes) -> bool:
            backend.save(FileType.DATA, file_id(data), data)
            return backend.load(FileType.DATA, file_id(data)) == data

        with ThreadPoolExecutor(8) as pool:
            assert all(within(60, lambda: list(pool.map(roundtrip, blobs))))
        assert len(dict(backend.list(FileType.DATA))) == 16
        backend.close()


def test_sftp_paramiko_socket_failing_under_an_active_transport(sshd_server: SSHDServer) -> None:
    """The socket fails before paramiko's reader notices (here: its sending side shut): the call
    fails with TransientBackendError, not the EOFError paramiko raises while closing the channels
    of the broken connection, and the next call reconnects."""
    options = {**sshd_server.options, **FAST_SFTP, **NO_RETRY, "sftp_transport": "paramiko"}
    backend = open_backend(sshd_server.url(f"halfdead-{uuid.uuid4().hex[:8]}"), **options)
    backend.create()
    backend.save(FileType.KEY, "cd" * 32, b"key")
    sftp = cast(SFTPBackend, innermost(backend))
    assert sftp._conn is not None
    transport = sftp._conn.carrier.transport  # type: ignore[attr-defined]
    transport.sock.shutdown(socket.SHUT_WR)
    assert transport.is_active()
    with pytest.raises(TransientBackendError, match=r"connection to 127\.0\.0\.1 failed"):
        backend.load(FileType.KEY, "cd" * 32)
    assert backend.load(FileType.KEY, "cd" * 32) == b"key"
    backend.close()


def test_sftp_without_posix_rename_or_fsync(sshd_server: SSHDServer) -> None:
    """The fallbacks for servers lacking OpenSSH's extensions keep the contract."""
    backend = open_backend(sshd_server.url(f"plain-{uuid.uuid4().hex[:8]}"), **sshd_server.options, **FAST_SFTP)
    sftp = cast(SFTPBackend, innermost(backend))
    sftp._posix_rename = sftp._fsync = False
    backend.create()
    name = file_id(b"pack")
    backend.save(FileType.DATA, name, b"pack")
    backend.save(FileType.DATA, name, b"pack")  # the target exists: plain rename fails, that is fine
    assert dict(backend.list(FileType.DATA)) == {name: 4}
    backend.save(FileType.CONFIG, "config", b"one")
    with pytest.raises(AlreadyExists):
        backend.save(FileType.CONFIG, "config", b"two")
    assert backend.load(FileType.CONFIG, "config") == b"one"
    root = sshd_server.root / sftp.path.rsplit("/", 1)[1]
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]  # no temporaries left behind
    backend.close()


# --- refusals: permanent errors, reported at once ---


@pytest.fixture
def open_sftp(transport: dict[str, str]) -> Callable[..., Backend]:
    def open_it(server: SSHDServer, **options: Any) -> Backend:
        return open_backend(server.url("refused"), **{**server.options, **FAST_SFTP, **transport, **options})

    return open_it


def test_sftp_unknown_host_key_is_refused(
    sshd_server: SSHDServer, tmp_path: Path, open_sftp: Callable[..., Backend]
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    backend = open_sftp(sshd_server, sftp_known_hosts=str(empty))
    with pytest.raises(BackendError, match=r"not in .*known_hosts") as info:
        within(30, backend.exists)
    assert not isinstance(info.value, TransientBackendError)
    accepting = open_sftp(sshd_server, sftp_known_hosts=str(empty), sftp_strict_host_keys="no")
    assert accepting.exists() is False
    accepting.close()


def test_sftp_changed_host_key_is_refused(
    sshd_server: SSHDServer, tmp_path: Path, open_sftp: Callable[..., Backend]
) -> None:
    other = write_ed25519_key(tmp_path / "other_host_key", "impostor")
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd_server.port} {other}\n")
    for strict in (True, False):  # a changed key is never accepted
        backend = open_sftp(sshd_server, sftp_known_hosts=str(wrong), sftp_strict_host_keys=strict)
        with pytest.raises(BackendError, match="host key differs") as info:
            within(30, backend.exists)
        assert not isinstance(info.value, TransientBackendError)


def test_sftp_wrong_user_key_is_refused(
    sshd_server: SSHDServer, tmp_path: Path, open_sftp: Callable[..., Backend]
) -> None:
    write_ed25519_key(tmp_path / "id_other", "stranger")
    backend = open_sftp(sshd_server, sftp_key=str(tmp_path / "id_other"))
    with pytest.raises(BackendError, match="authentication failed") as info:
        within(30, backend.exists)
    assert not isinstance(info.value, TransientBackendError)
    missing = open_sftp(sshd_server, sftp_key=str(tmp_path / "no_such_key"))
    with pytest.raises(BackendError, match="does not exist"):
        missing.exists()


def test_sftp_nothing_listening_is_transient(tmp_path: Path, transport: dict[str, str]) -> None:
    backend = open_backend(f"sftp://me@127.0.0.1:{free_port()}//repo", **FAST_SFTP, **transport)
    with pytest.raises(TransientBackendError, match="cannot connect"):
        within(30, backend.exists)


def test_s3_missing_bucket_is_created(any_s3_server: MotoServer | RGWServer) -> None:
    bucket = f"fresh-{uuid.uuid4().hex[:12]}"
    backend = open_backend(any_s3_server.url("repo", bucket=bucket), **FAST_S3)
    assert backend.exists() is False
    with pytest.raises(BackendError, match="does not exist"):
        backend.save(FileType.KEY, "cd" * 32, b"key")
    backend.create()
    backend.save(FileType.KEY, "cd" * 32, b"key")
    assert backend.load(FileType.KEY, "cd" * 32) == b"key"
    backend.close()


def test_s3_without_credentials(s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    backend = open_backend(s3_server.url("repo"), **FAST)
    with pytest.raises(BackendError, match="no S3 credentials") as info:
        backend.exists()
    assert not isinstance(info.value, TransientBackendError)
    backend.close()
