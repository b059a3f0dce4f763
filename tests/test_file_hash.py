"""Every backed-up regular file records `fh`, the keyed hash of its whole content (format.md 9),
computed from the bytes the backup read: small and streamed files, sparse files (holes hash as
the zeros a restore gives back), stdin, hardlinks, and files reused unchanged from the parent."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest
from fastrepo import init_fast
from oldformat import strip_file_hashes
from support.cli import CLI, PASSWORD

from backupfs.backends.local import LocalBackend
from backupfs.crypto import file_hash
from backupfs.format.tree import Node
from backupfs.ops.treeview import lookup
from backupfs.repository.repo import Repository

MiB = 1 << 20


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    init_fast(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


def rand(n: int, seed: int) -> bytes:
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)


def nodes_of(repo_path: Path, paths: list[str], snapshot: str = "latest") -> tuple[bytes, dict[str, Node]]:
    """(the fh key, the stored node of each path) of a snapshot."""
    repo = Repository.open(LocalBackend(str(repo_path)), PASSWORD.encode())
    try:
        repo.load_index()
        _sid, snap = repo.find_snapshot(snapshot)
        return repo.master.file_hash_key(), {p: lookup(repo, snap.tree, p) for p in paths}
    finally:
        repo.close()


def test_each_kind_of_file_records_the_hash_of_what_restore_gives_back(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty").write_bytes(b"")
    (src / "small").write_bytes(rand(5000, 1))
    (src / "streamed").write_bytes(rand(9 * MiB + 7, 2))  # past the 8 MiB read-whole limit
    with open(src / "sparse", "wb") as f:  # hole, data, hole, data, trailing hole
        f.seek(3 * MiB)
        f.write(rand(100_000, 3))
        f.seek(6 * MiB)
        f.write(rand(5000, 4))
        f.truncate(9 * MiB)
    (src / "linked").write_bytes(rand(3000, 5))
    os.link(src / "linked", src / "second-name")
    assert os.stat(src / "sparse").st_blocks * 512 < 9 * MiB, "the file system made no holes"
    cli("backup", src)
    names = ["empty", "small", "streamed", "sparse", "linked", "second-name"]
    key, nodes = nodes_of(cli.repo, [f"{src}/{n}" for n in names])
    for name in names:
        node = nodes[f"{src}/{name}"]
        content = (src / name).read_bytes()
        assert node.file_hash == file_hash(key, content), name
        assert cli("cat", "latest", f"{src}/{name}").stdout == content
    assert nodes[f"{src}/sparse"].size == 9 * MiB and len(nodes[f"{src}/sparse"].content or []) < 9


def test_stdin_records_the_hash_of_the_stream(cli: CLI) -> None:
    data = rand(3 * MiB + 11, 6)
    cli("backup", "--stdin", "--stdin-filename", "dump.sql", input=data)
    key, nodes = nodes_of(cli.repo, ["/dump.sql"])
    assert nodes["/dump.sql"].file_hash == file_hash(key, data)


def test_unchanged_files_keep_the_parents_hash_and_changed_ones_get_a_new_one(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "same").write_bytes(rand(4000, 7))
    (src / "changes").write_bytes(rand(4000, 8))
    cli("backup", src)
    (src / "changes").write_bytes(rand(4001, 9))
    out = cli("backup", "--json", src).stdout.decode()
    assert '"files_unchanged": 1' in out and '"files_changed": 1' in out
    key, nodes = nodes_of(cli.repo, [f"{src}/same", f"{src}/changes"])
    assert nodes[f"{src}/same"].file_hash == file_hash(key, (src / "same").read_bytes())
    assert nodes[f"{src}/changes"].file_hash == file_hash(key, (src / "changes").read_bytes())


def test_a_reused_file_without_a_hash_stays_without_one(cli: CLI, tmp_path: Path) -> None:
    """A parent written before `fh` existed: its unchanged files are reused as they are (the
    hash would need the file read again, which is what reusing avoids)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "old").write_bytes(rand(4000, 10))
    cli("backup", src)
    strip_file_hashes(cli.repo)
    assert nodes_of(cli.repo, [f"{src}/old"])[1][f"{src}/old"].file_hash is None
    assert '"files_unchanged": 1' in cli("backup", "--json", src).stdout.decode()
    assert nodes_of(cli.repo, [f"{src}/old"])[1][f"{src}/old"].file_hash is None
