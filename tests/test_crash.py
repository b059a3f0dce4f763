"""Failures in the middle of things: wrong password, SIGKILL, Ctrl-C, a full disk.

Each must end with one clear line and a documented exit code, and leave a repository that `check`
accepts and the next backup can use.
"""

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

MiB = 1024 * 1024
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    """conftest's `cli` on a repository whose key is cheap to unlock (fastrepo.py says why)."""
    init_fast(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


def write_random_files(root: Path, count: int, size: int, seed: int = 0) -> int:
    """`count` incompressible files (fast: BLAKE3 XOF); returns the total size."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"f{i:03d}.bin").write_bytes(blake3.blake3(f"{seed}-{i}".encode()).digest(length=size))
    return count * size


def repo_size(repo: Path) -> int:
    return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())


def pack_bytes(repo: Path) -> int:
    """Bytes in complete packs (temporary files start with a dot and are not packs yet)."""
    return sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file() and not p.name.startswith("."))


def start(cli: CLI, *args: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "backupfs", "-r", str(cli.repo), *map(str, args)],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(condition: object, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, f"finished too early: {proc.communicate()}"
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.005)


def one_line(stderr: bytes) -> str:
    text = stderr.decode(errors="replace")
    assert "Traceback" not in text and "internal error" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("backupfs: "), text
    return lines[0]


def test_wrong_password(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    for args in (["snapshots"], ["backup", tmp_path / "src"], ["check"], ["key", "list"]):
        proc = cli(*args, check=False, env={"BACKUPFS_PASSWORD": "not the password"})
        assert proc.returncode == 12
        assert "wrong password" in one_line(proc.stderr)
    assert not list((cli.repo / "snapshots").iterdir())
    assert not list((cli.repo / "locks").iterdir())


@pytest.mark.slow
def test_killed_backup_is_consistent_and_its_packs_are_reused(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    total = write_random_files(src, 10, 30 * MiB)
    proc = start(cli, "backup", "-q", src)
    wait_for(lambda: pack_bytes(cli.repo) >= total * 0.4, proc)  # about half-way
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    uploaded = pack_bytes(cli.repo)
    assert uploaded < total, "the backup finished before it could be killed"
    assert not list((cli.repo / "snapshots").iterdir())

    # check accepts the repository: unindexed packs are a warning, the dead lock is stale
    checked = cli("check")
    assert b"error" not in checked.stderr.replace(b"no errors", b"")

    out = cli("backup", src, "--json")
    added = json.loads(out.stdout.splitlines()[-1])["data_added"]
    assert added <= total - uploaded + 2 * 16 * MiB, (added, uploaded)  # at most the packs in flight are redone
    assert repo_size(cli.repo) < total * 1.1  # the source is stored about once, not once and a half

    cli("check", "--read-data")
    target = tmp_path / "target"
    cli("restore", "latest", "--target", target, "--include", str(src / "f000.bin"), "--include", str(src / "f009.bin"))
    for name in ("f000.bin", "f009.bin"):
        assert (target / str(src).lstrip("/") / name).read_bytes() == (src / name).read_bytes()


def test_interrupted_backup(cli: CLI) -> None:
    """Ctrl-C: exit 130, one line, no snapshot, no lock left behind, repository fine. The backup
    reads standard input that this test holds open, so the signal always lands mid-backup (with
    files, a fast backup could finish between the first pack and the signal)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupfs", "-r", str(cli.repo), "backup", "-q", "--stdin"],
        env=cli.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(os.urandom(64 * MiB))  # packs of 16 MiB: the first is written while we wait
    proc.stdin.flush()
    wait_for(lambda: pack_bytes(cli.repo) > 0, proc)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)  # standard input still open: only the signal can end it
    _out, err = proc.communicate()
    assert proc.returncode == 130, err
    assert one_line(err) == "backupfs: interrupted"
    assert not list((cli.repo / "snapshots").iterdir())
    assert not list((cli.repo / "locks").iterdir())
    cli("check")


def test_stdin_backup_killed_leaves_no_snapshot(cli: CLI) -> None:
    """SIGKILL mid-stream: packs of the stream are uploaded, no snapshot, and check is happy."""
    backup = subprocess.Popen(
        [sys.executable, "-m", "backupfs", "-r", str(cli.repo), "backup", "-q", "--stdin"],
        env=cli.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert backup.stdin is not None
    fed = 0
    # Feed until a pack is stored: backupfs has read, chunked and uploaded part of the stream
    # (far more than a pipe holds), and it is still waiting for the rest.
    while pack_bytes(cli.repo) == 0:
        assert backup.poll() is None, backup.communicate()
        assert fed < 400 * MiB, "no pack was stored"
        backup.stdin.write(blake3.blake3(fed.to_bytes(8, "little")).digest(length=MiB))
        fed += MiB
    backup.kill()
    backup.communicate()
    assert backup.returncode == -signal.SIGKILL, "backupfs ended before the kill"
    assert fed >= 16 * MiB  # at least one whole pack of the stream came through
    assert not list((cli.repo / "snapshots").iterdir())
    checked = cli("check")
    assert b"error" not in checked.stderr.replace(b"no errors", b"")


@root_only
def test_repository_disk_full(make_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ENOSPC while saving packs: one line, exit 1, and the repository stays consistent."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], check=True)
    try:
        cli = make_cli(mnt / "repo")
        cli("init")
        small = tmp_path / "small_src"
        write_random_files(small, 1, 1 * MiB, seed=1)
        cli("backup", small)
        big = tmp_path / "big_src"
        write_random_files(big, 3, 8 * MiB, seed=2)
        proc = cli("backup", big, check=False)
        assert proc.returncode == 1
        assert "no space left on device" in one_line(proc.stderr)
        assert not list((mnt / "repo" / "locks").iterdir())
        cli("check", "--read-data")  # the first snapshot is intact
        assert len(json.loads(cli("snapshots", "--json").stdout)) == 1
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
