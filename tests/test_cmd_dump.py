"""`backupfs dump`: a file as it is, a folder as tar (checked by extracting it with GNU tar and
comparing with rsync -aHAX) or zip, streamed in bounded memory, damaged chunks as zeros."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from everyday import ambiguous_prefix, fast_cli, one_line_error, open_repo
from support.cli import CLI
from support.richtree import make_rich_tree, rsync_diff

from backupfs.ops.dump import acl_text
from backupfs.ops.treeview import lookup

MiB = 1 << 20

# Runs the CLI and writes its peak RSS (KiB, VmHWM: this program's own, not the forking parent's)
# to the file named by the first argument (as tests/test_bombs.py).
MEASURED = """
import runpy, sys
out = sys.argv.pop(1)
try:
    runpy.run_module("backupfs", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(out, "w") as f:
        f.write(peak)
"""


@pytest.fixture
def rich(tmp_path: Path, cli_env: dict[str, str]) -> tuple[CLI, Path]:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    make_rich_tree(src)
    shutil.rmtree(src / "sparse")  # 90 MiB of holes would be 90 MiB of zeros in a tar: slow, not new
    with open(src / "holes", "wb") as f:  # a small sparse file instead: a hole, data, a hole
        f.seek(100_000)
        f.write(os.urandom(5000))
        f.truncate(300_000)
    os.utime(src, ns=(1_600_000_000 * 10**9, 1_650_000_000 * 10**9))
    cli("backup", src)
    return cli, src


def test_tar_keeps_what_tar_can_hold(rich: tuple[CLI, Path], tmp_path: Path) -> None:
    """Extracted by GNU tar as root, the dump equals the source for rsync -aHAX: contents, modes,
    owners, nanosecond mtimes, symlinks, hard links, devices, fifos, xattrs and ACLs."""
    cli, src = rich
    archive = tmp_path / "out.tar"
    cli("dump", "latest", src, "--target", archive)
    out = tmp_path / "extracted"
    out.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner", "-xpf", archive, "-C", out],
        check=True,
        capture_output=True,
    )
    assert rsync_diff(src, out / str(src).lstrip("/")) == ""
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        hard = [m for m in tar.getmembers() if m.islnk()]
    assert names[0] == str(src).lstrip("/")  # the folder itself first, then what it holds
    assert len(hard) == 2  # three names of one inode: one file, two links to it


def test_single_file_and_stdout(rich: tuple[CLI, Path]) -> None:
    cli, src = rich
    assert cli("dump", "latest", src / "random.bin").stdout == (src / "random.bin").read_bytes()
    assert cli("dump", "latest", src / "empty").stdout == b""
    assert cli("dump", "latest", src / "holes").stdout == (src / "holes").read_bytes()  # holes as zeros
    data = cli("dump", "latest", src / "dir").stdout  # a folder to a pipe: tar
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        leaf = tar.extractfile(str(src / "dir" / "sub" / "subsub" / "leaf.txt").lstrip("/"))
        assert leaf is not None and leaf.read() == b"leaf\n"


def test_zip_keeps_contents_modes_and_symlinks(rich: tuple[CLI, Path], tmp_path: Path) -> None:
    cli, src = rich
    target = tmp_path / "out.zip"
    proc = cli("dump", "latest", src, "--archive", "zip", "--target", target, "--json")
    summary = json.loads(proc.stdout)
    assert summary["format"] == "zip" and summary["bytes_written"] == target.stat().st_size
    assert b"zip cannot hold a fifo" in proc.stderr  # said, not silently dropped
    base = str(src).lstrip("/")
    with zipfile.ZipFile(target) as zf:
        assert zf.testzip() is None
        assert zf.read(f"{base}/big.bin") == (src / "big.bin").read_bytes()
        link = zf.getinfo(f"{base}/links/rel")
        assert stat.S_ISLNK(link.external_attr >> 16) and zf.read(link) == b"../small.txt"
        setuid = zf.getinfo(f"{base}/modes/setuid")
        assert setuid.external_attr >> 16 == stat.S_IFREG | 0o4755
        assert zf.getinfo(f"{base}/dir/").is_dir()
        assert zf.read(f"{base}/hl2/c") == (src / "hl1" / "a").read_bytes()  # a copy: zip has no links


def test_damaged_chunk_is_zeros_and_exit_4(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    (src / "good").write_bytes(b"g" * 1000)
    (src / "bad").write_bytes(os.urandom(5000))
    cli("backup", src)
    repo = open_repo(cli.repo)
    try:
        node = lookup(repo, repo.list_snapshots()[-1][1].tree, src / "bad")
        assert node.content
        loc = repo.index.lookup(node.content[0][1])
        assert loc is not None
        pack = next(cli.repo.glob(f"data/*/{loc.pack_id.hex()}"))
    finally:
        repo.close()
    with open(pack, "r+b") as f:  # flip a byte inside the blob: authentication fails
        f.seek(loc.offset + loc.length // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    target = tmp_path / "out.tar"
    proc = cli("dump", "latest", src, "-t", target, check=False)
    assert proc.returncode == 4 and b"bad: " in proc.stderr and b"written as zeros" in proc.stderr
    with tarfile.open(target) as tar:  # still a whole archive: the good file intact, the bad one zeros
        base = str(src).lstrip("/")
        assert tar.extractfile(f"{base}/good").read() == b"g" * 1000  # type: ignore[union-attr]
        assert tar.extractfile(f"{base}/bad").read() == bytes(5000)  # type: ignore[union-attr]


def test_large_file_streams_in_bounded_memory(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """384 MiB out, well under 384 MiB of memory: chunks are written as they come."""
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    size = 384 * MiB
    with open(src / "big", "wb") as f:
        for _ in range(size // (8 * MiB)):
            f.write(bytes(8 * MiB))
    cli("backup", src)
    (src / "big").unlink()
    peak_file = tmp_path / "peak"
    for what in (src / "big", src):  # the file alone, and the folder as tar
        total, nonzero = 0, 0
        with subprocess.Popen(
            [sys.executable, "-c", MEASURED, peak_file, "-r", cli.repo, "dump", "latest", what],
            stdout=subprocess.PIPE,
            env=cli.env,
        ) as proc:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(MiB):
                nonzero += len(chunk.strip(b"\0")) > 0
                total += len(chunk)
        assert proc.returncode == 0
        assert nonzero <= (0 if what != src else 2)  # zeros, but for the tar's headers
        assert total == size if what != src else total > size
        assert int(peak_file.read_text()) < 160 * 1024, f"peak {peak_file.read_text()} KiB"


def test_dump_bad_input(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    cli("backup", src)
    assert "no snapshot matches" in one_line_error(cli("dump", "abcdef", src / "f", check=False), 2)
    assert "no such file" in one_line_error(cli("dump", "latest", src / "nope", check=False), 2)
    assert "--json needs --target" in one_line_error(cli("dump", "latest", src, "--json", check=False), 2)
    proc = cli("dump", "latest", src, "--archive", "rar", check=False)
    assert proc.returncode == 2 and b"invalid choice: 'rar'" in proc.stderr
    missing_dir = tmp_path / "no" / "such" / "dir" / "out.tar"
    one_line_error(cli("dump", "latest", src, "-t", missing_dir, check=False), 1)
    assert not missing_dir.parent.exists()
    prefix = ambiguous_prefix(cli.repo)
    assert "is ambiguous" in one_line_error(cli("dump", prefix, src / "f", check=False), 2)


def test_acl_text_is_the_long_form_with_numeric_ids() -> None:
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, 1234), (0x04, 5, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF), (0x20, 0, 0)]
    value = (2).to_bytes(4, "little") + b"".join(
        t.to_bytes(2, "little") + p.to_bytes(2, "little") + i.to_bytes(4, "little") for t, p, i in entries
    )
    assert acl_text(value) == "user::rw-\nuser:1234:r--\ngroup::r-x\nmask::rwx\nother::---\n"
    assert acl_text(value[:-1]) is None and acl_text(b"\x03\x00\x00\x00") is None
