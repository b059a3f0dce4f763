"""Several processes on one repository at once: backups, check, and the locks between them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest
from fastrepo import init_fast
from support.cli import CLI
from support.richtree import rsync_diff

MiB = 1024 * 1024
BACKUPFS = [sys.executable, "-m", "backupfs"]


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    """conftest's `cli` on a repository whose key is cheap to unlock (fastrepo.py says why)."""
    init_fast(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


def make_source(root: Path, seed: str, shared: bytes) -> None:
    """Own random data, plus `shared` content both sources hold (both backups upload it at once)."""
    (root / "sub").mkdir(parents=True)
    for i in range(4):
        (root / f"own{i}.bin").write_bytes(blake3.blake3(f"{seed}{i}".encode()).digest(length=6 * MiB))
    (root / "shared.bin").write_bytes(shared)
    for i in range(50):
        (root / "sub" / f"small{i}").write_bytes(f"{seed} small file {i}\n".encode() * (i + 1))


def start(cli: CLI, *args: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*BACKUPFS, "-r", str(cli.repo), *map(str, args)],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 300) -> tuple[bytes, bytes]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode(errors="replace")
    return out, err


@pytest.mark.slow
def test_two_concurrent_backups(cli: CLI, tmp_path: Path) -> None:
    shared = blake3.blake3(b"shared").digest(length=12 * MiB)
    a, b = tmp_path / "a", tmp_path / "b"
    make_source(a, "a", shared)
    make_source(b, "b", shared)
    procs = [start(cli, "backup", "--json", src) for src in (a, b)]
    ids = [json.loads(finish(p)[0].splitlines()[-1])["snapshot_id"] for p in procs]

    snaps = {s["id"]: s for s in json.loads(cli("snapshots", "--json").stdout)}
    assert set(snaps) == set(ids)
    cli("check", "--read-data")
    for sid, src in zip(ids, (a, b), strict=True):
        target = tmp_path / f"restore-{src.name}"
        cli("restore", sid, "--target", target, "--verify")
        assert rsync_diff(src, target / str(src).lstrip("/")) == ""


def test_check_while_a_backup_runs(cli: CLI, tmp_path: Path) -> None:
    """Check sees a repository in the middle of a backup: packs without an index yet, locks, and
    maybe a snapshot appearing. None of that is an error."""
    src = tmp_path / "src"
    make_source(src, "first", b"")
    cli("backup", src)
    big = tmp_path / "big"
    big.mkdir()
    for i in range(8):
        (big / f"f{i}").write_bytes(blake3.blake3(f"big{i}".encode()).digest(length=8 * MiB))
    backup = start(cli, "backup", "-q", big)
    checks = 0
    while backup.poll() is None or checks == 0:
        proc = cli("check", check=False)
        assert proc.returncode == 0, proc.stderr.decode()
        checks += 1
    finish(backup)
    cli("check")
    assert len(json.loads(cli("snapshots", "--json").stdout)) == 2


def test_exclusive_lock_conflicts_with_a_running_backup(cli: CLI, tmp_path: Path) -> None:
    """`key passwd` needs the repository to itself: while a backup runs it fails with exit 11."""
    src = tmp_path / "src"
    src.mkdir()
    slow_source = "import sys, time; sys.stdout.write('x'); sys.stdout.flush(); time.sleep(60)"
    backup = subprocess.Popen(
        [
            *BACKUPFS,
            "-r",
            str(cli.repo),
            "backup",
            "-q",
            "--stdin-from-command",
            "--",
            sys.executable,
            "-c",
            slow_source,
        ],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the source command is killed with it
    )
    try:
        deadline = time.monotonic() + 60
        while not list((cli.repo / "locks").iterdir()):
            assert backup.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc = cli("key", "passwd", check=False, env={"BACKUPFS_NEW_PASSWORD": "new"})
        err = proc.stderr.decode()
        assert proc.returncode == 11, err
        assert err.count("\n") == 1 and err.startswith("backupfs: repository is already locked"), err
        assert proc.stderr.count(b"PID") == 1
        cli("snapshots")  # shared locks do not conflict
    finally:
        os.killpg(backup.pid, signal.SIGKILL)
        backup.communicate()
    # the killed backup's lock is stale (its process is gone): the exclusive command now works
    cli("key", "passwd", env={"BACKUPFS_NEW_PASSWORD": "new"})
    cli("snapshots", env={"BACKUPFS_PASSWORD": "new"})
