"""`backupfs stats`: restore size (hard links once), distinct files, stored size and the ratios,
checked against numbers worked out from the files themselves."""

from __future__ import annotations

import json
import os
from pathlib import Path

from everyday import ambiguous_prefix, fast_cli, freeze_folder_atimes, one_line_error, open_repo, snapshot_ids
from support.cli import CLI

from backupfs.ops.stats import collect
from backupfs.ops.treeview import lookup


def _tree(src: Path) -> None:
    (src / "a").mkdir(parents=True)
    (src / "a" / "random").write_bytes(os.urandom(100_000))  # incompressible
    (src / "a" / "zeros").write_bytes(bytes(200_000))  # compresses to almost nothing
    (src / "copy").write_bytes((src / "a" / "random").read_bytes())  # same content, other name
    (src / "hard").write_bytes(b"h" * 10_000)
    os.link(src / "hard", src / "hard2")  # one inode, two names: restored as a link, counted once
    freeze_folder_atimes(src)


def test_stats_modes_and_ratios(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    _tree(src)
    cli("backup", src)
    cli("backup", src)  # the same again: restore size doubles, stored size does not
    first, second = snapshot_ids(cli)
    one = json.loads(cli("stats", "latest", "--json").stdout)
    file_bytes = 100_000 + 200_000 + 100_000 + 10_000
    assert one["snapshots_count"] == 1 and one["mode"] == "restore-size"
    assert one["total_size"] == one["restore_size"] == file_bytes
    # entries: every folder on the way from / to src, src's 4 entries and a/'s 2 (restic counts all)
    assert one["total_file_count"] == one["restore_file_count"] == len(src.parts) - 1 + 4 + 2
    assert one["unique_files"] == 3 and one["unique_files_size"] == 100_000 + 200_000 + 10_000
    assert one["data_size"] == 100_000 + 200_000 + 10_000  # the copy's chunks are stored once
    assert one["stored_size"] < 100_000 + 20_000  # zeros compressed
    assert one["compression_ratio"] > 2.5 and one["deduplication_ratio"] > 1.2
    assert one["repository_size"] >= one["stored_size"]

    both = json.loads(cli("stats", "--json").stdout)
    assert both["snapshots_count"] == 2 and both["restore_size"] == 2 * file_bytes
    assert both["data_blobs"] == one["data_blobs"] and both["data_size"] == one["data_size"]
    assert one["stored_size"] <= both["stored_size"] < one["stored_size"] + 4096  # new listings of /tmp...
    assert abs(both["deduplication_ratio"] - 2 * one["deduplication_ratio"]) < 0.01

    raw = json.loads(cli("stats", first, second[:8], "--mode", "raw-data", "--json").stdout)
    assert raw["total_size"] == raw["stored_size"] == both["stored_size"]  # the same two snapshots
    assert raw["total_blob_count"] == raw["data_blobs"] + raw["tree_blobs"]
    by_content = json.loads(cli("stats", "--mode", "files-by-contents", "--json").stdout)
    assert by_content["total_size"] == 310_000 and by_content["total_file_count"] == 3

    text = cli("stats").stdout.decode()
    assert "Stats in restore-size mode:" in text and "Deduplication ratio:  2." in text


def test_stats_bad_input(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    cli("backup", src)
    assert "no snapshot matches" in one_line_error(cli("stats", "0123abcd", check=False), 2)
    assert "invalid snapshot id" in one_line_error(cli("stats", "latest!", check=False), 2)
    proc = cli("stats", "--mode", "raw", check=False)
    assert proc.returncode == 2 and b"did you mean 'raw-data'?" in proc.stderr
    prefix = ambiguous_prefix(cli.repo)
    assert "is ambiguous" in one_line_error(cli("stats", prefix, check=False), 2)
    # an empty selection is no error: zeros
    empty = json.loads(cli("stats", "--host", "nobody", "--json").stdout)
    assert empty["snapshots_count"] == 0 and empty["restore_size"] == 0 and empty["deduplication_ratio"] == 1.0


def test_stats_reads_each_listing_once(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Snapshots sharing folders are summed from one reading of each distinct listing."""
    cli: CLI = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    _tree(src)
    for _ in range(3):
        cli("backup", src)
    repo = open_repo(cli.repo)
    try:
        roots = [s.tree for _sid, s in repo.list_snapshots()]
        shared = {lookup(repo, root, src).subtree for root in roots}
        loaded: list[bytes] = []
        real = repo.load_tree
        repo.load_tree = lambda t: loaded.append(t) or real(t)  # type: ignore[method-assign,func-returns-value]
        stats = collect(repo, roots)
    finally:
        repo.close()
    assert len(shared) == 1  # src/ did not change: one listing for it (and a/) in all three
    assert len(loaded) == len(set(loaded)) == stats.tree_blobs < 3 * (len(src.parts) + 1) - 4
    assert stats.restore_size == 3 * 410_000
