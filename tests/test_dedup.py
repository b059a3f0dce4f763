"""Deduplication: unchanged data is stored once, shifted data mostly once (content-defined chunks)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest
from fastrepo import init_fast
from support.cli import CLI

MiB = 1024 * 1024


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    """conftest's `cli` on a repository whose key is cheap to unlock (fastrepo.py says why)."""
    init_fast(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


def rand(n: int, seed: str) -> bytes:
    return blake3.blake3(seed.encode()).digest(length=n)


def repo_size(repo: Path) -> int:
    return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())


def backup(cli: CLI, *args: str | os.PathLike[str]) -> dict[str, int]:
    out = cli("backup", "--json", *args)
    summary: dict[str, int] = json.loads(out.stdout.splitlines()[-1])
    return summary


def make_200mib_tree(root: Path) -> int:
    """Random files, compressible text (hex) and a few hundred small files: about 200 MiB."""
    (root / "small").mkdir(parents=True)
    total = 0
    for i in range(5):
        data = rand(32 * MiB, f"big{i}")
        (root / f"big{i}.bin").write_bytes(data)
        total += len(data)
    text = rand(2 * MiB, "text").hex().encode()  # 4 MiB of hex: compresses, and is not all alike
    with open(root / "log.txt", "wb") as f:
        for i in range(10):
            f.write(b"%d\n" % i + text)
            total += len(text) + 2
    small = rand(300 * 8 * 1024, "small")
    for i in range(300):
        (root / "small" / f"s{i:03d}").write_bytes(small[i * 8192 : (i + 1) * 8192 - i])
        total += 8192 - i
    return total


@pytest.mark.slow
def test_second_backup_of_unchanged_tree_grows_repo_under_one_percent(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    total = make_200mib_tree(src)
    assert total >= 200 * MiB
    first = backup(cli, src)
    assert first["bytes_read"] == total
    size1 = repo_size(cli.repo)

    second = backup(cli, src)  # unchanged files are not even read
    assert second["bytes_read"] == 0 and second["files_unchanged"] == 306
    size2 = repo_size(cli.repo)
    assert size2 - size1 < size1 / 100

    third = backup(cli, "--force", src)  # everything read again: content dedup alone
    assert third["bytes_read"] == total
    assert third["data_added"] < total / 1000
    assert repo_size(cli.repo) - size1 < size1 / 100


def test_insertion_near_start_reuses_most_chunks(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = rand(32 * MiB, "insert")
    (src / "large.bin").write_bytes(data)
    first = backup(cli, src)
    assert first["data_added"] >= len(data)
    size1 = repo_size(cli.repo)

    (src / "large.bin").write_bytes(data[:5000] + b"a few inserted bytes" + data[5000:])
    second = backup(cli, src)
    assert second["files_changed"] == 1 and second["bytes_read"] == len(data) + 20
    # average chunk ~1 MiB: the insertion re-writes one or two chunks, not the file
    assert second["data_added"] < len(data) * 0.15, second
    assert repo_size(cli.repo) - size1 < len(data) * 0.15

    target = tmp_path / "t"
    cli("restore", "latest", "--target", target)
    assert (target / str(src).lstrip("/") / "large.bin").read_bytes() == (src / "large.bin").read_bytes()


def test_identical_files_stored_once(cli: CLI, tmp_path: Path) -> None:
    """Duplicates across files and directories cost nothing the second time."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    data = rand(6 * MiB, "dup")
    for d in ("a", "b"):
        for n in range(3):
            (src / d / f"copy{n}").write_bytes(data)
    summary = backup(cli, src)
    assert summary["bytes_read"] == 6 * len(data)
    assert len(data) <= summary["data_added"] < len(data) * 1.01
