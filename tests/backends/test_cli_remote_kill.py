"""A backup whose server dies, or whose network breaks, half-way: the real CLI on SFTP (a real
OpenSSH sshd, through the system's ssh client) and S3 (a real moto server, and a real Ceph cluster whose gateway is killed).

The promise (issue 4, "Reliability"): the backup ends with one clear error and a documented exit
code, within a bounded time; the repository stays consistent; the next backup completes, re-uses
the packs that did reach the server, and restores byte for byte; the dead backup's lock does not
get in its way. tests/test_server.py::test_server_killed_mid_backup proves the same for rest:.
At the end: the backend behaviour behind the error lines, checked without a CLI in between.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from support.servers import MotoServer, RGWServer, SSHDServer, free_port, shutdown_all, write_ed25519_key

from backupfs.backends.base import FileType
from backupfs.backends.s3 import S3Backend
from backupfs.backends.sftp.backend import SFTPBackend
from backupfs.errors import TransientBackendError

from .test_cli_remote import RemoteCli

MiB = 1 << 20
# Two attempts with short pauses: a real outage would be ridden out for about half a minute
# (docs/backends.md, Retries); here the backup must give up within seconds.
FAST = {"retry_attempts": 2, "retry_base_delay": 0.05, "retry_max_delay": 0.1}
FAILING_TIMEOUT = 1  # sftp_timeout / s3_timeout of the backup that fails: how it notices a partition
GIVE_UP_WITHIN = 15  # seconds from the failure to the backup's exit
PACKS_BEFORE_BREAK = 6
# Every line but the last may be a retry notice; the last is the error.
RETRY_LINE = re.compile(r"^\S.* failed \(.*\); retry \d+ of \d+ in [\d.]+ s$")


class Link:
    """A TCP forwarder on a fixed local port that breaks the ways a network or server does.

    kill(): every connection is closed and the port refuses new ones, as when the server
    process dies; start() listens again on the same port.
    partition(): bytes stop flowing both ways but connections stay open (a dead route, a
    hung server): only the client's own timeouts can end its calls; heal() drops those
    connections and forwards again.
    (backend_servers.TcpProxy cuts connections but accepts new ones at once, so the retries
    would succeed: a backup would just carry on.)
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._live: list[socket.socket] = []
        self._all: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self.start()

    def _thread(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._thread(self._accept, listener)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._all.append(client)
                self._live.append(client)
            if not self._flowing.is_set():
                continue  # partitioned: the connection is accepted and never answered
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.shutdown(socket.SHUT_RDWR)
                continue
            with self._lock:
                self._all.append(upstream)
                self._live.append(upstream)
            self._thread(self._pump, client, upstream)
            self._thread(self._pump, upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            self._flowing.wait()  # a partition holds the bytes here; the buffers fill up behind
            try:
                dst.sendall(data)
            except OSError:
                return

    def _drop_all(self) -> None:
        with self._lock:
            socks, self._live = self._live, []
        shutdown_all(socks)

    def kill(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            self._listener.close()
            self._listener = None
        self._drop_all()

    def partition(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self._drop_all()
        self._flowing.set()

    def close(self) -> None:
        self.kill()
        self._flowing.set()
        for t in self._threads:
            t.join(timeout=5)
        for s in self._all:
            s.close()


@dataclass
class Scenario:
    cli: RemoteCli  # every command but the backup that fails
    failing: RemoteCli  # that backup: two attempts, short timeouts
    packs: Callable[[], int]  # complete data packs on the server, counted behind the client's back
    locks: Callable[[], int]
    break_: Callable[[], None]
    repair: Callable[[], None]
    expect: str  # regex the error line must match


def _tree(root: Path) -> Path:
    """About 20 MiB in files of several sizes, all random: nothing deduplicates by chance."""
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    for i, size in enumerate([6, 4, 4, 2, 2, 1, 1]):
        (src / ("sub" if i % 2 else ".") / f"f{i}.bin").write_bytes(os.urandom(size * MiB))
    (src / "small.txt").write_text("small\n")
    return src


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tree(tmp_path_factory.mktemp("kill-source"))


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _local_count(directory: Path) -> Callable[[], int]:
    return lambda: sum(1 for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))


def _s3_count(client: Any, prefix: str) -> Callable[[], int]:
    def count() -> int:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket="backupfs-test", Prefix=prefix)
        return sum(page.get("KeyCount", 0) for page in pages)

    return count


@pytest.fixture(
    params=["sftp-killed", "sftp-partitioned", "s3-killed", "s3-partitioned", "rgw-killed", "rgw-partitioned"]
)
def scenario(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scenario]:
    kind, failure = request.param.split("-")
    name = "repo"
    closing = contextlib.ExitStack()
    link: Link | None = None
    if kind == "sftp":
        sshd: SSHDServer = request.getfixturevalue("private_sshd")
        packs, locks = _local_count(sshd.root / name / "data"), _local_count(sshd.root / name / "locks")
        options, env, timeout_option = sshd.options, {}, "sftp_timeout"
        if failure == "killed":
            # The real thing: sshd and every session process get SIGKILL; the files stay on disk.
            url = sshd.url(name)
            break_, repair, expect = sshd.stop, sshd.start, r"cannot connect to .*: connection refused$"
        else:
            link = Link(sshd.port)
            closing.callback(link.close)
            sshd.trust_port(link.port)
            url = sshd.url(name, port=link.port)
    elif kind == "rgw":
        # The shared Ceph cluster. Its objects live in the OSD, so here the gateway process
        # itself gets SIGKILL and is started again on the same port: the real thing.
        rgw: RGWServer = request.getfixturevalue("rgw_server")
        name = f"kill-{tmp_path.name}"
        client = boto3.client("s3", endpoint_url=rgw.endpoint, region_name="us-east-1")  # straight to RGW
        closing.callback(client.close)
        packs, locks = _s3_count(client, f"{name}/data/"), _s3_count(client, f"{name}/locks/")
        options, env, timeout_option = {}, RGWServer.env, "s3_timeout"
        if failure == "killed":
            url = rgw.url(name)
            break_, repair, expect = rgw.kill, rgw.restart, r"cannot reach .*: connection refused$"
        else:
            link = Link(rgw.port)
            closing.callback(link.close)
            url = f"s3:http://127.0.0.1:{link.port}/backupfs-test/{name}"
    else:
        # The shared moto server: only the link in front of it breaks, never moto itself.
        s3: MotoServer = request.getfixturevalue("s3_server")
        name = f"kill-{tmp_path.name}"
        client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")  # straight to moto
        closing.callback(client.close)
        packs, locks = _s3_count(client, f"{name}/data/"), _s3_count(client, f"{name}/locks/")
        options, env, timeout_option = {}, MotoServer.env, "s3_timeout"
        link = Link(s3.port)
        closing.callback(link.close)
        url = f"s3:http://127.0.0.1:{link.port}/backupfs-test/{name}"
        if failure == "killed":
            # moto keeps its objects in memory: a killed moto has no repository left to come back
            # to. So what dies here is the server's port: every connection is closed and new ones
            # are refused, which is what a client sees of a killed server process; the "restart"
            # listens on the same port again, in front of the objects as they were.
            break_, repair, expect = link.kill, link.start, r"cannot reach .*: connection refused$"
    if failure == "partitioned":
        assert link is not None
        break_, repair, expect = link.partition, link.heal, r"127\.0\.0\.1.*timed out\)?$"
    with closing:
        yield Scenario(
            RemoteCli(url, {**options, **FAST, timeout_option: 10}, tmp_path, env),
            RemoteCli(url, {**options, **FAST, timeout_option: FAILING_TIMEOUT}, tmp_path, env),
            packs,
            locks,
            break_,
            repair,
            expect,
        )


def test_backup_fails_cleanly_and_the_next_one_resumes(scenario: Scenario, source: Path, tmp_path: Path) -> None:
    cli = scenario.cli
    cli("init", "--pack-size", "1")
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    failing = scenario.failing
    backup = subprocess.Popen(
        failing.argv("backup", source), env=failing.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while (uploaded := scenario.packs()) < PACKS_BEFORE_BREAK:
            assert backup.poll() is None, "the backup ended before the server went away"
            assert time.monotonic() < deadline, "no packs arrived"
            time.sleep(0.01)
        scenario.break_()
        broken = time.monotonic()
        _out, err_bytes = backup.communicate(timeout=60)
        elapsed = time.monotonic() - broken
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    err = err_bytes.decode(errors="replace")
    lines = err.strip().splitlines()
    assert backup.returncode == 1, err  # "fatal error" (docs/architecture.md, exit codes)
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("backupfs: ") and re.search(scenario.expect, lines[-1], re.I), err
    assert all(RETRY_LINE.match(line) for line in lines[:-1]), err
    assert elapsed < GIVE_UP_WITHIN, f"the backup took {elapsed:.1f} s to give up"

    scenario.repair()
    assert scenario.locks() == 1  # the dead backup could not remove its lock, but its process is
    # gone (same host): the lock is stale and stops no one, not even a command that locks
    # exclusively (a backup's lock is shared, like the next backup's, so that alone proves less)
    cli("forget", "--keep-last", "1")
    cli("check", "--read-data")  # consistent: at most packs that no index lists yet
    summary = json.loads(cli("backup", source, "--json").stdout.splitlines()[-1])
    assert summary["data_added"] <= total - (uploaded - 1) * MiB, (summary, uploaded)  # the packs up are re-used
    target = tmp_path / "restored"
    cli("restore", "latest", "--target", target)
    assert _digests(target / str(source).lstrip("/")) == _digests(source)


# --- the backend behaviour behind those error lines, without a CLI in between ---


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose connections are accepted (by the kernel) and never answered: a hung server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.fixture(params=["openssh", "paramiko"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _sftp(tmp_path: Path, port: int, timeout: float, transport: str) -> SFTPBackend:
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
        transport=transport,
    )


def test_sftp_names_refused_and_unanswered_connections(tmp_path: Path, silent_port: int, transport: str) -> None:
    refused = _sftp(tmp_path, free_port(), timeout=5, transport=transport)
    # ssh's own text: "ssh: connect to host 127.0.0.1 port N: Connection refused";
    # paramiko's: "[Errno None] Unable to connect to port N on 127.0.0.1"
    with pytest.raises(TransientBackendError, match=r"^cannot connect to .*127\.0\.0\.1:\d+: connection refused$"):
        refused.stat(FileType.CONFIG, "config")
    refused.close()
    silent = _sftp(tmp_path, silent_port, timeout=1, transport=transport)
    # ssh says nothing until its own ConnectTimeout; paramiko: "Error reading SSH protocol
    # banner" or "No existing session", whichever wait ends first
    with pytest.raises(TransientBackendError, match=r"^cannot connect to .*: the server did not answer \(timed out\)$"):
        silent.stat(FileType.CONFIG, "config")
    silent.close()


def test_sftp_threads_share_a_failed_reconnect(tmp_path: Path, silent_port: int, transport: str) -> None:
    """Threads waiting for another's reconnect take its failure instead of each sitting through a
    timeout of their own in turn (which made a partitioned backup take threads x timeout)."""
    backend = _sftp(tmp_path, silent_port, timeout=1, transport=transport)
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
    # paramiko's handshake fails on whichever of its waits ends first; the message says what happened
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
