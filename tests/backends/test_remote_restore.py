"""Restore from a remote repository reads as restic's does (issue 15): each needed pack once, by
runs of needed blobs, several requests at once; and what `--json` says crossed the link is what
the SFTP server itself saw.

Observed on the real sshd: the client side through the counting wrapper every backend carries
(backends/counting.py), the server side in OpenSSH's sftp-server log."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.richtree import rsync_diff
from support.servers import FAST_SFTP, SSHDServer

from backupfs.backends.base import FileType
from backupfs.backends.counting import counter_of
from backupfs.backends.registry import open_backend
from backupfs.ops.backup import Archiver, BackupOptions
from backupfs.ops.restore import Restorer
from backupfs.repository.repo import Repository

from .test_cli_remote import PASSWORD, RemoteCli

MiB = 1 << 20


def _tree(root: Path) -> Path:
    """Small files (restored in batches) and a large one (streamed), ~6 MiB: several 1 MiB packs."""
    src = root / "src"
    for i in range(24):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i:02}").write_bytes(os.urandom(100_000 + 1000 * i))
    (src / "big.bin").write_bytes(os.urandom(3 * MiB))
    (src / "copy-of-f00").write_bytes((src / "d0" / "f00").read_bytes())  # dedup: one blob, two files
    return src


def test_remote_restore_reads_each_pack_once_several_at_a_time(sshd_server: SSHDServer, tmp_path: Path) -> None:
    src = _tree(tmp_path)
    url = sshd_server.url(f"packs-{uuid.uuid4().hex[:8]}")
    options = {**sshd_server.options, **FAST_SFTP}
    repo = Repository.init(open_backend(url, **options), PASSWORD.encode(), kdf=(1, 8192), pack_size=MiB)
    try:
        Archiver(repo, BackupOptions(paths=[str(src)])).run()
    finally:
        repo.close()

    backend = open_backend(url, **options)
    counter = counter_of(backend)
    assert counter is not None
    loads: list[tuple[str, int, int | None]] = []
    # The first two ranged reads of packs wait for each other: they meet only if the restore has
    # a second one under way before the first is answered (if not, the wait ends after 30 s).
    meet = threading.Barrier(2, timeout=30)
    met: list[bool] = []
    lock = threading.Lock()

    def on_load(ftype: FileType, name: str, offset: int, length: int | None) -> None:
        if ftype is not FileType.DATA:
            return
        with lock:
            loads.append((name, offset, length))
            mine = len(met) if length is not None and len(met) < 2 else None
            if mine is not None:
                met.append(False)
        if mine is not None:
            try:
                meet.wait()
                met[mine] = True
            except threading.BrokenBarrierError:
                pass

    repo = Repository.open(backend, PASSWORD.encode(), cache_dir=str(tmp_path / "cache"), cache_files=True)
    try:
        repo.load_index()
        packs = {loc.pack_id.hex() for _bid, loc in repo.index.items()}
        ((_sid, snap),) = repo.list_snapshots()
        counter.on_load = on_load
        stats = Restorer(repo, snap.tree, str(tmp_path / "out")).run()
    finally:
        repo.close()
    assert not stats.errors
    assert rsync_diff(src, tmp_path / "out" / str(src).lstrip("/")) == ""
    assert len(packs) >= 5
    per_pack = Counter(name for name, _offset, _length in loads)
    assert set(per_pack) <= packs
    assert max(per_pack.values()) == 1, per_pack  # no pack read twice, not even in parts
    assert met == [True, True]  # two reads were under way at once
    assert counter.transfer().peak_in_flight >= 2


def _wait_closed(server: SSHDServer, since: int) -> dict[str, int]:
    """The server's figures once every file it opened is closed (it logs a transfer at the close)."""
    deadline = time.monotonic() + 30
    while True:
        seen = server.sftp_transfers(since)
        if seen["opens"] == seen["closes"] or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


@pytest.fixture(scope="module")
def logging_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHDServer]:
    with SSHDServer(tmp_path_factory.mktemp("sshd-log"), sftp_log=True) as server:
        yield server


def test_json_transfer_is_what_the_sftp_server_saw(logging_sshd: SSHDServer, tmp_path: Path) -> None:
    src = _tree(tmp_path)
    cli = RemoteCli(logging_sshd.url(tmp_path.name), logging_sshd.options, tmp_path, {})
    cli("init")
    for command in (["backup", src], ["restore", "latest", "--target", tmp_path / "out"], ["check", "--read-data"]):
        mark = logging_sshd.sftp_log_size()
        out = cli("--json", *command).stdout.decode().splitlines()
        summary = json.loads(out[-1])
        seen = _wait_closed(logging_sshd, mark)
        transfer = summary["transfer"]
        assert transfer["bytes_up"] == seen["bytes_written"], (command, transfer, seen)
        assert transfer["bytes_down"] == seen["bytes_read"], (command, transfer, seen)
        # every load and save opens one file; stat, list and remove open none
        assert transfer["requests"] >= seen["opens"] > 0
    assert rsync_diff(src, tmp_path / "out" / str(src).lstrip("/")) == ""
