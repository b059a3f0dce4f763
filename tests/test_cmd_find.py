"""`backupfs find`: names and globs with restic's semantics, time bounds, snapshot selection, and
`--blob`/`--tree` for support work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from everyday import ambiguous_prefix, fast_cli, one_line_error, open_repo, snapshot_ids
from support.cli import CLI

from backupfs.ops.find import PathMatcher
from backupfs.ops.treeview import lookup

T_OLD = 1_500_000_000 * 10**9  # 2017-07-14
T_NEW = 1_700_000_000 * 10**9  # 2023-11-14


@pytest.fixture
def repo_with_history(tmp_path: Path, cli_env: dict[str, str]) -> tuple[CLI, Path, list[str]]:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    (src / "docs" / "old").mkdir(parents=True)
    (src / "music").mkdir()
    (src / "docs" / "report.pdf").write_bytes(b"%PDF new" * 100)
    (src / "docs" / "old" / "Report.PDF").write_bytes(b"%PDF old")
    (src / "music" / "song.mp3").write_bytes(os.urandom(2000))
    os.utime(src / "docs" / "old" / "Report.PDF", ns=(T_OLD, T_OLD))
    os.utime(src / "docs" / "report.pdf", ns=(T_NEW, T_NEW))
    cli("backup", src, "--tag", "first")
    (src / "music" / "song.mp3").unlink()
    (src / "docs" / "notes.txt").write_text("notes\n")
    cli("backup", src, "--tag", "second")
    return cli, src, snapshot_ids(cli)


def test_find_by_glob_newest_snapshot_first(repo_with_history: tuple[CLI, Path, list[str]]) -> None:
    cli, src, (first, second) = repo_with_history
    out = cli("find", "*.mp3").stdout.decode().splitlines()
    assert out[0].startswith(f"Found matching entries in snapshot {first[:8]} from ")
    assert out[1].endswith(f"  {src}/music/song.mp3") and "1.953 KiB" in out[1]  # time, size, path
    docs = json.loads(cli("find", "*.pdf", "--json").stdout)
    assert [d["snapshot_id"] for d in docs] == [second, first]  # newest first, as restic
    assert [m["path"] for m in docs[0]["matches"]] == [f"{src}/docs/report.pdf"]
    assert docs[0]["hits"] == 1 and docs[0]["matches"][0]["size"] == 800
    assert docs[0]["matches"][0]["mtime"].startswith("2023-11-1")  # RFC 3339 with zone
    # -i: case does not matter; -R: oldest first
    docs = json.loads(cli("find", "*.pdf", "-i", "-R", "--json").stdout)
    assert [d["snapshot_id"] for d in docs] == [first, second]
    assert sorted(m["path"] for m in docs[0]["matches"]) == [f"{src}/docs/old/Report.PDF", f"{src}/docs/report.pdf"]


def test_find_folder_name_includes_its_contents_and_anchored_paths(
    repo_with_history: tuple[CLI, Path, list[str]],
) -> None:
    cli, src, (_first, second) = repo_with_history
    docs = json.loads(cli("find", "old", "--snapshot", second, "--json").stdout)
    assert [m["path"] for m in docs[0]["matches"]] == [f"{src}/docs/old", f"{src}/docs/old/Report.PDF"]
    docs = json.loads(cli("find", f"{src}/docs/*.txt", "--json").stdout)
    assert [(d["snapshot_id"], [m["path"] for m in d["matches"]]) for d in docs] == [(second, [f"{src}/docs/notes.txt"])]
    assert json.loads(cli("find", "/nowhere/*", "--json").stdout) == []


def test_find_time_bounds_and_snapshot_filters(repo_with_history: tuple[CLI, Path, list[str]]) -> None:
    cli, src, (first, _second) = repo_with_history
    docs = json.loads(cli("find", "*.pdf", "-i", "--newest", "2020-01-01", "--json").stdout)
    assert {m["path"] for d in docs for m in d["matches"]} == {f"{src}/docs/old/Report.PDF"}
    docs = json.loads(cli("find", "*.pdf", "-i", "--oldest", "2020-01-01T00:00:00+00:00", "--json").stdout)
    assert {m["path"] for d in docs for m in d["matches"]} == {f"{src}/docs/report.pdf"}
    docs = json.loads(cli("find", "*.pdf", "--tag", "first", "--json").stdout)
    assert [d["snapshot_id"] for d in docs] == [first]


def test_find_blob_and_tree_ids(repo_with_history: tuple[CLI, Path, list[str]]) -> None:
    cli, src, (first, second) = repo_with_history
    repo = open_repo(cli.repo)
    try:
        pdf = lookup(repo, repo.load_snapshot(second).tree, src / "docs" / "report.pdf")
        docs_dir = lookup(repo, repo.load_snapshot(first).tree, src / "music")
    finally:
        repo.close()
    assert pdf.content and docs_dir.subtree
    blob = pdf.content[0][1].hex()
    hits = json.loads(cli("find", "--blob", blob[:10], "--json").stdout)
    assert {(h["snapshot_id"], h["path"], h["object_type"]) for h in hits} == {
        (second, f"{src}/docs/report.pdf", "blob"),
        (first, f"{src}/docs/report.pdf", "blob"),
    }
    assert all(h["id"] == blob and h["pack"] and h["parent_tree"] for h in hits)
    hits = json.loads(cli("find", "--tree", docs_dir.subtree.hex(), "--json").stdout)
    assert [(h["snapshot_id"], h["path"]) for h in hits] == [(first, f"{src}/music")]
    text = cli("find", "--tree", docs_dir.subtree.hex()[:8]).stdout.decode()
    assert f" ... path {src}/music" in text and f"in snapshot {first[:8]}" in text


def test_find_bad_input(repo_with_history: tuple[CLI, Path, list[str]]) -> None:
    cli, _src, _ids = repo_with_history
    assert "no snapshot matches" in one_line_error(cli("find", "x", "-s", "abcdef12", check=False), 2)
    assert "invalid blob id" in one_line_error(cli("find", "--blob", "xyz", check=False), 2)
    assert "invalid tree id" in one_line_error(cli("find", "--tree", "ab", check=False), 2)
    assert "later than --newest" in one_line_error(
        cli("find", "x", "--oldest", "2024-01-02", "--newest", "2024-01-01", check=False), 2
    )
    proc = cli("find", "x", "--newest", "yesterday-ish", check=False)
    assert proc.returncode == 2 and b"invalid time 'yesterday-ish'" in proc.stderr and b"Traceback" not in proc.stderr
    proc = cli("find", "--blob", "--tree", "abcd", check=False)
    assert proc.returncode == 2 and b"not allowed with" in proc.stderr
    prefix = ambiguous_prefix(cli.repo)
    assert "is ambiguous" in one_line_error(cli("find", "x", "-s", prefix, check=False), 2)


def test_anchored_patterns_skip_folders_that_cannot_match() -> None:
    """restic's ChildMatch: an anchored pattern reads only the folders on its way."""
    m = PathMatcher(["/home/*/docs"])
    assert [m.may_match_below(p) for p in ("/home", "/home/a", "/home/a/docs/x", "/var", "/home/a/music")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    deep = PathMatcher(["/home/**/x"])
    assert deep.may_match_below("/home/a/b/c") and not deep.may_match_below("/srv")
    anywhere = PathMatcher(["docs", "/home"])
    assert anywhere.may_match_below("/srv/anything")
    assert PathMatcher(["*.pdf"]).matches("/a/b.pdf") and not PathMatcher(["*.pdf"]).matches("/a/b.pdfx")
