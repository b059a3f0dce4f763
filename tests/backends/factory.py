"""The backend factory the conformance suite is parametrized with: fresh repositories of one kind
on the shared servers of conftest.py."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from support.rest_server import RestServer
from support.servers import FAST, FAST_S3, FAST_SFTP, MotoServer, RGWServer, SSHDServer

from backupfs.backends.base import Backend
from backupfs.backends.memory import MemoryBackend
from backupfs.backends.registry import open_backend
from backupfs.backends.retry import RetryBackend


class BackendFactory:
    """Makes backends of one kind on fresh repositories, and closes them after the test."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.kind = kind
        self._request = request
        self._tmp = tmp_path
        self._opened: list[Backend] = []
        self.fs_root: Path | None = None  # where the files are, for kinds with a local directory

    def __call__(self, create: bool = True, name: str | None = None, **options: Any) -> Backend:
        name = name or f"repo-{uuid.uuid4().hex[:12]}"
        backend: Backend
        if self.kind == "memory":
            backend = RetryBackend(MemoryBackend())
        elif self.kind == "local":
            self.fs_root = self._tmp / name
            backend = open_backend(str(self.fs_root), **{**FAST, **options})
        elif self.kind in ("sftp", "sftp-paramiko"):  # the system's ssh client, or paramiko
            server: SSHDServer = self._request.getfixturevalue("sshd_server")
            self.fs_root = server.root / name
            transport = {"sftp_transport": "paramiko"} if self.kind == "sftp-paramiko" else {}
            backend = open_backend(server.url(name), **{**server.options, **FAST_SFTP, **transport, **options})
        elif self.kind in ("s3", "rgw"):
            s3: MotoServer | RGWServer = self._request.getfixturevalue(f"{self.kind}_server")
            backend = open_backend(s3.url(name), **{**FAST_S3, **options})
        elif self.kind == "rest":
            rest: RestServer = self._request.getfixturevalue("rest_server")
            self.fs_root = rest.path / name
            backend = open_backend(rest.url(name), **{**FAST, **options})
        else:
            raise AssertionError(self.kind)
        self._opened.append(backend)
        if create:
            backend.create()
        return backend

    def close(self) -> None:
        for backend in self._opened:
            backend.close()
