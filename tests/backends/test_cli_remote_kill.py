"""What SFTP and S3 report when a server refuses connections or does not answer: a one-line
error that names the cause, given within the timeout (the CLI prints it as its error line).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupfs.backends.base import FileType
from backupfs.backends.s3 import S3Backend
from backupfs.backends.sftp import SFTPBackend
from backupfs.errors import TransientBackendError

from .backend_servers import MotoServer, free_port, write_ed25519_key


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose connections are accepted (by the kernel) and never answered: a hung server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def _sftp(tmp_path: Path, port: int, timeout: float) -> SFTPBackend:
    key = tmp_path / "id_ed25519"
    if not key.exists():
        write_ed25519_key(key, "unused")
    (tmp_path / "known_hosts").touch()
    return SFTPBackend(
        "127.0.0.1",
        "/repo",
        port=port,
        key_filename=str(key),
        known_hosts=str(tmp_path / "known_hosts"),
        timeout=timeout,
    )


def test_sftp_names_refused_and_unanswered_connections(tmp_path: Path, silent_port: int) -> None:
    refused = _sftp(tmp_path, free_port(), timeout=5)
    # paramiko's own text: "[Errno None] Unable to connect to port N on 127.0.0.1"
    with pytest.raises(TransientBackendError, match=r"^cannot connect to .*127\.0\.0\.1:\d+: connection refused$"):
        refused.stat(FileType.CONFIG, "config")
    refused.close()
    silent = _sftp(tmp_path, silent_port, timeout=1)
    # paramiko's: "Error reading SSH protocol banner" or "No existing session", whichever wait ends first
    with pytest.raises(TransientBackendError, match=r"^cannot connect to .*: the server did not answer \(timed out\)$"):
        silent.stat(FileType.CONFIG, "config")
    silent.close()


def test_sftp_threads_share_a_failed_reconnect(tmp_path: Path, silent_port: int) -> None:
    """Threads waiting for another's reconnect take its failure instead of each sitting through a
    timeout of their own in turn (which made a partitioned backup take threads x timeout)."""
    backend = _sftp(tmp_path, silent_port, timeout=1)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            backend.stat(FileType.CONFIG, "config")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(5)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - started
    assert len(errors) == 5 and all(isinstance(e, TransientBackendError) for e in errors), errors
    # the handshake fails on whichever of paramiko's waits ends first; the message says what happened
    assert {str(e).split(": ", 1)[1] for e in errors} == {"the server did not answer (timed out)"}, errors
    assert elapsed < 3.5, f"{elapsed:.1f} s: the threads waited for each other's timeouts"  # one after another: >= 5 s
    backend.close()


def test_s3_names_refused_and_unanswered_connections(monkeypatch: pytest.MonkeyPatch, silent_port: int) -> None:
    for key, value in MotoServer.env.items():
        monkeypatch.setenv(key, value)
    refused = S3Backend(f"http://127.0.0.1:{free_port()}", "backupfs-test", "repo", timeout=5)
    # botocore's own text: 'Could not connect to the endpoint URL: "http://127.0.0.1:N/backupfs-test/repo/config"'
    with pytest.raises(
        TransientBackendError, match=r"^config: cannot reach http://127\.0\.0\.1:\d+: connection refused$"
    ):
        refused.stat(FileType.CONFIG, "config")
    refused.close()
    silent = S3Backend(f"http://127.0.0.1:{silent_port}", "backupfs-test", "repo", timeout=0.5)
    with pytest.raises(
        TransientBackendError, match=r"^save data/(ab)+: cannot reach http://127\.0\.0\.1:\d+: timed out$"
    ):
        silent.save(FileType.DATA, "ab" * 32, b"data")
    silent.close()
