"""Files are read to their end, whatever `stat` said, and a file that changes while it is read is
saved as read and reported.

/proc files say their size is 0; a log grows while the backup reads it. The growing files here
are real files that grow during the read: a wrapper around os.pread/os.preadv appends to the file
the moment backupfs first reads it (the deterministic form of a writer racing the backup).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest
from fastrepo import init_fast
from support.cli import CLI

from backupfs.cli.main import main

MiB = 1024 * 1024


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    init_fast(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


def rand(n: int, seed: int) -> bytes:
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)


def stored(cli: CLI, path: Path | str) -> bytes:
    return cli("cat", "latest", str(path)).stdout


def test_proc_files_are_read_to_their_end(cli: CLI) -> None:
    """stat says 0 bytes; the file holds more (the old code stored 1 byte, exit 0, no warning)."""
    assert os.stat("/proc/version").st_size == 0
    cli("backup", "/proc/version", "/proc/cpuinfo")
    assert stored(cli, "/proc/version") == Path("/proc/version").read_bytes()

    # cpuinfo is several reads long; only its clock-speed lines change from one read to the next
    def steady(text: bytes) -> list[bytes]:
        return [line for line in text.splitlines() if b"MHz" not in line]

    cpuinfo = stored(cli, "/proc/cpuinfo")
    assert len(cpuinfo) > 1000
    assert steady(cpuinfo) == steady(Path("/proc/cpuinfo").read_bytes())


@pytest.fixture
def grow_on_first_read(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, bytes], list[int]]:
    """Appends `extra` to `path` just before backupfs's first read of it; returns a list that
    records the reads of that file (so a test can show the growth happened mid-read)."""

    def install(path: Path, extra: bytes) -> list[int]:
        ino = path.stat().st_ino
        reads: list[int] = []
        real_pread, real_preadv = os.pread, os.preadv

        def grow(fd: int) -> None:
            if os.fstat(fd).st_ino == ino:
                if not reads:
                    with open(path, "ab") as f:
                        f.write(extra)
                reads.append(fd)

        def pread(fd: int, n: int, offset: int) -> bytes:
            grow(fd)
            return real_pread(fd, n, offset)

        def preadv(fd: int, buffers: list[memoryview], offset: int, *flags: int) -> int:
            grow(fd)
            return real_preadv(fd, buffers, offset, *flags)

        monkeypatch.setattr(os, "pread", pread)
        monkeypatch.setattr(os, "preadv", preadv)
        return reads

    return install


@pytest.fixture
def in_process(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """The real CLI's main() in this process (so the read wrapper applies), with cli's settings."""
    for key, value in cli.env.items():
        monkeypatch.setenv(key, value)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["-r", str(cli.repo), *args])
        out, err = capfd.readouterr()
        return code, out, err

    yield run


@pytest.mark.parametrize(
    ("initial", "extra"),
    [
        (100_000, 50_000),  # small: read whole in memory
        (7 * MiB, 3 * MiB),  # small by stat, large by the time it is read: streamed after what was read
        (12 * MiB, 1 * MiB),  # large: streamed from the start
    ],
    ids=["small", "outgrows-small", "large"],
)
def test_file_growing_while_read_is_saved_whole_and_reported(
    cli: CLI,
    tmp_path: Path,
    grow_on_first_read: Callable[[Path, bytes], list[int]],
    in_process: Callable[..., tuple[int, str, str]],
    initial: int,
    extra: int,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    log = src / "app.log"
    log.write_bytes(rand(initial, 1))
    (src / "quiet.txt").write_bytes(b"does not change\n")
    reads = grow_on_first_read(log, rand(extra, 2))

    code, out, err = in_process("backup", "--json", str(src))

    assert code == 0, err
    assert reads, "the file was never read"
    assert log.stat().st_size == initial + extra
    assert stored(cli, log) == log.read_bytes()
    assert stored(cli, src / "quiet.txt") == b"does not change\n"
    assert f"warning: {log}: file changed while reading" in err
    result = json.loads(out.splitlines()[-1])
    assert result["files_changed_during_backup"] == 1
    assert result["changed_during_backup"] == [{"path": str(log)}]


def test_sparse_file_growing_while_read_keeps_its_holes_and_the_new_tail(
    cli: CLI,
    tmp_path: Path,
    grow_on_first_read: Callable[[Path, bytes], list[int]],
    in_process: Callable[..., tuple[int, str, str]],
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sparse = src / "disk.img"
    with open(sparse, "wb") as f:
        f.write(rand(MiB, 3))
        f.seek(20 * MiB)
        f.write(rand(MiB, 4))
        f.seek(40 * MiB)  # ends in a hole
        f.truncate()
    if os.stat(sparse).st_blocks * 512 >= 40 * MiB:
        pytest.skip("the filesystem of the temporary folder does not keep holes")
    reads = grow_on_first_read(sparse, rand(2 * MiB, 5))

    code, out, err = in_process("backup", "--json", str(src))

    assert code == 0, err
    assert reads
    expected = sparse.read_bytes()
    assert len(expected) == 42 * MiB
    assert stored(cli, sparse) == expected
    assert f"warning: {sparse}: file changed while reading" in err
    assert json.loads(out.splitlines()[-1])["files_changed_during_backup"] == 1


def test_unchanged_files_raise_no_warning(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(rand(3 * MiB, 6))
    (src / "empty").write_bytes(b"")
    proc = cli("backup", "--json", src)
    assert b"changed while reading" not in proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["files_changed_during_backup"] == 0
    assert result["changed_during_backup"] == []
    assert stored(cli, src / "a") == (src / "a").read_bytes()
    assert stored(cli, src / "empty") == b""
