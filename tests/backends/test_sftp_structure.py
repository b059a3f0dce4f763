"""The sftp package's seams: paramiko's private API in one module, layers that do not need it."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest
from support.servers import SSHDServer

import backupfs
from backupfs.backends.base import FileType
from backupfs.backends.sftp.backend import SFTPBackend
from backupfs.backends.sftp.pool import SessionPool
from backupfs.backends.sftp.protocol import Session
from backupfs.crypto import file_id

SOURCES = Path(backupfs.__file__).parent
PROTOCOL = SOURCES / "backends" / "sftp" / "protocol.py"


def _private_uses(path: Path) -> list[str]:
    """`x._name` where x is not self or cls: reaching into another object's private API."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(f"{path.relative_to(SOURCES)}:{node.lineno}: .{node.attr}")
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_paramiko_private_api_only_in_the_protocol_module() -> None:
    users = [p for p in SOURCES.rglob("*.py") if "paramiko" in _imports(p)]
    assert PROTOCOL in users
    offenders = [use for p in users if p != PROTOCOL for use in _private_uses(p)]
    assert offenders == []
    assert _private_uses(PROTOCOL)  # the check does see them where they are


def test_pool_and_backend_do_not_depend_on_paramiko() -> None:
    """A second transport (an OpenSSH client) slots in beside connect.py without touching these."""
    for name in ("pool.py", "backend.py"):
        assert "paramiko" not in _imports(SOURCES / "backends" / "sftp" / name), name


class _Pipes:
    """The socket-like object paramiko's SFTPClient needs, over an `ssh -s sftp` process."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._out, self._in = self.proc.stdin.fileno(), self.proc.stdout.fileno()

    def send(self, data: bytes) -> int:
        return os.write(self._out, data)

    def recv(self, n: int) -> bytes:
        return os.read(self._in, n)

    def get_name(self) -> str:  # paramiko's log lines name the channel
        return f"ssh pid {self.proc.pid}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


class _OpenSSHCarrier:
    """A second transport, written against the Carrier seam only: one OpenSSH client per session."""

    def __init__(self, server: SSHDServer) -> None:
        self.cmd = [
            "ssh", "-F", "/dev/null", "-p", str(server.port), "-i", str(server.client_key),
            "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "BatchMode=yes",
            "-s", f"{server.user}@127.0.0.1", "sftp",
        ]  # fmt: skip
        self.pipes: list[_Pipes] = []

    def open_session(self) -> Session:
        pipes = _Pipes(self.cmd)
        self.pipes.append(pipes)
        return Session(paramiko.SFTPClient(pipes))

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        for pipes in self.pipes:
            pipes.close()


def test_a_second_transport_needs_no_change_to_the_protocol_or_backend(sshd_server: SSHDServer) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("no OpenSSH client")
    carrier = _OpenSSHCarrier(sshd_server)
    backend = SFTPBackend(
        "127.0.0.1", str(sshd_server.root / "via-openssh"), connector=lambda: SessionPool(carrier, 2, 30.0)
    )
    backend.create()
    data = os.urandom(300_000)
    name = file_id(data)
    backend.save(FileType.DATA, name, data)
    assert backend.load(FileType.DATA, name, 1000, 100_000) == data[1000:101_000]
    assert list(backend.list(FileType.DATA)) == [(name, len(data))]
    backend.remove(FileType.DATA, name)
    assert list(backend.list(FileType.DATA)) == []
    backend.close()
    assert carrier.pipes and all(p.proc.returncode is not None for p in carrier.pipes)
