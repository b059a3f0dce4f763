"""`backupfs diff`: added, removed, changed (content vs metadata), the byte summary, and that folders
equal in both snapshots are never read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from everyday import ambiguous_prefix, fast_cli, freeze_folder_atimes, one_line_error, open_repo, snapshot_ids
from support.cli import CLI

from backupfs.ops.diff import Differ
from backupfs.ops.treeview import iter_tree, lookup


@pytest.fixture
def two_snapshots(tmp_path: Path, cli_env: dict[str, str]) -> tuple[CLI, Path, list[str]]:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    for d in ("same/a/b", "same/c", "gone/deep", "work"):
        (src / d).mkdir(parents=True)
    (src / "same" / "a" / "b" / "f").write_bytes(os.urandom(5000))
    (src / "same" / "c" / "g").write_text("unchanged\n")
    (src / "gone" / "deep" / "old").write_bytes(b"o" * 3000)
    (src / "work" / "edit").write_text("first\n")
    (src / "work" / "chmod").write_text("same bytes\n")
    (src / "work" / "becomes_link").write_text("a file\n")
    freeze_folder_atimes(src)
    cli("backup", src)
    (src / "work" / "edit").write_text("second, longer\n")
    os.chmod(src / "work" / "chmod", 0o600)
    (src / "work" / "becomes_link").unlink()
    (src / "work" / "becomes_link").symlink_to("edit")
    for p in (src / "gone" / "deep" / "old", src / "gone" / "deep", src / "gone"):
        p.unlink() if p.is_file() else p.rmdir()
    (src / "new").mkdir()
    (src / "new" / "n").write_bytes(b"n" * 7000)
    cli("backup", src)
    return cli, src, snapshot_ids(cli)


def test_diff_lists_each_kind_of_change(two_snapshots: tuple[CLI, Path, list[str]]) -> None:
    cli, src, (old, new) = two_snapshots
    s = str(src)
    lines = cli("diff", old[:8], new[:8]).stdout.decode().splitlines()
    changes = {line[5:]: line[:5].strip() for line in lines if line[:1] in "+-MTU?" and line[5:6] == "/"}
    assert changes == {
        f"{s}/gone/": "-",
        f"{s}/gone/deep/": "-",
        f"{s}/gone/deep/old": "-",
        f"{s}/new/": "+",
        f"{s}/new/n": "+",
        f"{s}/work/edit": "M",
        f"{s}/work/becomes_link": "T",
    }
    assert lines[0] == f"comparing snapshot {old[:8]} to {new[:8]}:"
    assert "Files:           1 new,     1 removed,     1 changed" in lines
    # --metadata adds the file whose mode alone changed (and folders whose mtime changed)
    meta = cli("diff", old, new, "--metadata").stdout.decode().splitlines()
    assert f"U    {s}/work/chmod" in meta
    assert not any(line.endswith(("/same/", "/same/a/")) for line in meta)


def test_diff_json_lines_and_byte_summary(two_snapshots: tuple[CLI, Path, list[str]]) -> None:
    cli, src, (old, new) = two_snapshots
    docs = [json.loads(line) for line in cli("diff", old, "latest", "--json").stdout.splitlines()]
    stats = docs[-1]
    assert stats["message_type"] == "statistics" and stats["source_snapshot_id"] == old and stats["target_snapshot_id"] == new
    assert {d["message_type"] for d in docs[:-1]} == {"change"}
    edit = next(d for d in docs if d.get("path") == f"{src}/work/edit")
    assert edit == {
        "message_type": "change",
        "path": f"{src}/work/edit",
        "modifier": "M",
        "type": "file",
        "size_before": 6,
        "size_after": 15,
    }
    assert stats["added"]["files"] == 1 and stats["added"]["dirs"] == 1 and stats["added"]["others"] == 0
    assert stats["removed"]["files"] == 1 and stats["removed"]["dirs"] == 2
    assert stats["changed_files"] == 1 and stats["type_changed"] == 1 and stats["metadata_changed"] >= 1
    # bytes: plaintext of the chunks only one side has (new/n, the new edit; old, the old edit and
    # the file that became a link), plus listings; never a chunk both sides share
    assert 7000 + 15 <= stats["added"]["bytes"] < 7000 + 15 + 4096
    assert 3000 + 6 + 7 <= stats["removed"]["bytes"] < 3000 + 13 + 4096
    # the same snapshot twice: nothing at all
    same = [json.loads(line) for line in cli("diff", new, new, "--json").stdout.splitlines()]
    assert len(same) == 1 and same[0]["added"]["bytes"] == 0 and same[0]["removed"]["bytes"] == 0


def test_diff_of_one_folder_or_file(two_snapshots: tuple[CLI, Path, list[str]]) -> None:
    cli, src, (old, new) = two_snapshots
    lines = cli("diff", old, new, src / "work", "-q").stdout.decode().splitlines()
    assert lines[0].startswith("Files:") and not any("/work" in line for line in lines)  # -q: summary only
    docs = [json.loads(line) for line in cli("diff", old, new, src / "work" / "edit", "--json").stdout.splitlines()]
    assert [d["path"] for d in docs[:-1]] == [f"{src}/work/edit"]
    # a folder only one snapshot has: all of it added
    docs = [json.loads(line) for line in cli("diff", old, new, src / "new", "--json").stdout.splitlines()]
    assert [d["modifier"] for d in docs[:-1]] == ["+", "+"]


def test_unchanged_folders_are_never_read(two_snapshots: tuple[CLI, Path, list[str]]) -> None:
    """The cost is the change, not the snapshot: no listing of `same/` (equal ids on both sides) is
    loaded, and each changed folder is loaded once per side."""
    cli, src, (old, new) = two_snapshots
    repo = open_repo(cli.repo)
    try:
        snap1, snap2 = repo.load_snapshot(old), repo.load_snapshot(new)
        same = lookup(repo, snap1.tree, src / "same")
        assert same.subtree == lookup(repo, snap2.tree, src / "same").subtree
        unchanged = {same.subtree} | {n.subtree for _p, n in iter_tree(repo, same.subtree) if n.subtree}
        loaded: list[bytes] = []
        real = repo.load_tree

        def counting(tree_id: bytes) -> list:  # type: ignore[type-arg]
            loaded.append(tree_id)
            return real(tree_id)

        repo.load_tree = counting  # type: ignore[method-assign]
        root1 = lookup(repo, snap1.tree, "/")
        root2 = lookup(repo, snap2.tree, "/")
        changes = list(Differ(repo).changes(root1, root2))
    finally:
        repo.close()
    assert changes and not unchanged & set(loaded)
    # the folders on the way to src, src itself, work/ (both sides), gone/ and gone/deep (old side),
    # new/ (new side): nothing else
    depth = len(src.parts)  # "/", tmp..., src: each an ancestor listing on both sides
    assert len(loaded) == 2 * depth + 2 + 2 + 1 == len(set(loaded))


def test_diff_bad_input(two_snapshots: tuple[CLI, Path, list[str]]) -> None:
    cli, _src, (old, _new) = two_snapshots
    assert "no snapshot matches 'deadbeef'" in one_line_error(cli("diff", old, "deadbeef", check=False), 2)
    assert "invalid snapshot id" in one_line_error(cli("diff", old, "not-hex!", check=False), 2)
    assert "either snapshot" in one_line_error(cli("diff", old, "latest", "/no/such/path", check=False), 2)
    prefix = ambiguous_prefix(cli.repo)
    assert "is ambiguous" in one_line_error(cli("diff", old, prefix, check=False), 2)
    proc = cli("diff", old, check=False)  # one snapshot only: argparse says what is missing
    assert proc.returncode == 2 and b"SNAPSHOT2" in proc.stderr and b"Traceback" not in proc.stderr
