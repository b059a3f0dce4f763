"""`backupfs tag`: tags change in a new snapshot file that records the one it replaces; the old file
is removed, or, through a real `serve --append-only`, kept and hidden."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from everyday import ambiguous_prefix, fast_cli, one_line_error, open_repo, snapshot_ids
from support.cli import CLI
from support.rest_server import RestServer

from backupfs.format.snapshot import Snapshot
from backupfs.ops.tag import new_tags


@pytest.fixture
def tagged(tmp_path: Path, cli_env: dict[str, str]) -> tuple[CLI, Path]:
    cli = fast_cli(tmp_path, cli_env, "srv/repo")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    cli("backup", src, "--tag", "a,b")
    return cli, src


def _snapshot_files(repo: Path) -> set[str]:
    return {p.name for p in (repo / "snapshots").iterdir()}


def test_tag_rewrites_metadata_only_and_removes_the_old_file(tagged: tuple[CLI, Path]) -> None:
    cli, _src = tagged
    (old,) = snapshot_ids(cli)
    before = json.loads(cli("snapshots", "--json").stdout)[0]
    doc = json.loads(cli("tag", old[:8], "--add", "c", "--remove", "a", "--json").stdout)
    assert doc["changed_snapshots"] == 1
    change = doc["changes"][0]
    assert change["old_snapshot_id"] == old and change["tags"] == ["b", "c"] and change["old_removed"]
    new = change["new_snapshot_id"]
    assert _snapshot_files(cli.repo) == {new}
    after = json.loads(cli("snapshots", "--json").stdout)[0]
    assert after["id"] == new and after["tags"] == ["b", "c"]
    same = ("time", "hostname", "paths", "tree", "summary", "parent")
    assert {k: after[k] for k in same} == {k: before[k] for k in same}
    repo = open_repo(cli.repo)
    try:
        snap = repo.load_snapshot(new)
        assert snap.replaces == [bytes.fromhex(old)] and snap.original == bytes.fromhex(old)
    finally:
        repo.close()
    # nothing to change: nothing written; --set "" clears; text output
    assert json.loads(cli("tag", "latest", "--add", "b", "--json").stdout)["changed_snapshots"] == 0
    assert cli("tag", "latest", "--set", "").stdout.decode().endswith("modified 1 snapshots\n")
    assert json.loads(cli("snapshots", "--json").stdout)[0]["tags"] == []
    cli("check")


def test_tag_through_append_only_server_adds_and_hides(tagged: tuple[CLI, Path], cli_env: dict[str, str]) -> None:
    cli, _src = tagged
    (old,) = snapshot_ids(cli)
    with RestServer(cli.repo.parent, "--append-only") as srv:
        client = CLI(srv.url("repo"), cli_env)  # type: ignore[arg-type]
        proc = client("tag", "latest", "--add", "offsite")
        assert b"append-only server keeps the 1 old snapshot file" in proc.stderr
        (first,) = snapshot_ids(client)
        client("tag", first, "--add", "second")  # a chain: hides both older versions
        (second,) = snapshot_ids(client)
        listed = json.loads(client("snapshots", "--json").stdout)
        assert [s["tags"] for s in listed] == [["a", "b", "offsite", "second"]]
        assert _snapshot_files(cli.repo) == {old, first, second}  # nothing was deleted
        # the hidden versions cannot be tagged by mistake: the error names the snapshot to use
        msg = one_line_error(client("tag", old[:8], "--add", "x", check=False), 2)
        assert f"replaced by {second[:8]}" in msg
        assert json.loads(client("find", "f", "--json").stdout)[0]["snapshot_id"] == second
    # on the server, forget removes the snapshot with the versions it hides (they would reappear)
    cli("forget", second)
    assert _snapshot_files(cli.repo) == set()


def test_old_readers_ignore_the_new_field_and_new_readers_read_old_files() -> None:
    old_style = Snapshot(time_ns=1, host="h", user="u", paths=["/"], tree=bytes(32))
    assert b"replaces" not in old_style.encode()  # a backup's snapshot file is byte-for-byte as before
    assert Snapshot.decode(old_style.encode()).replaces == []
    new_style = Snapshot(time_ns=1, host="h", user="u", paths=["/"], tree=bytes(32), replaces=[bytes(range(32))])
    assert Snapshot.decode(new_style.encode()).replaces == [bytes(range(32))]


def test_tag_rules_as_restic() -> None:
    assert new_tags(["a", "b"], ["c", "a"], ["b"], None) == ["a", "c"]
    assert new_tags(["a"], [], [], ["x", "y", "x"]) == ["x", "y"]
    assert new_tags(["a"], [], [], []) == []


def test_tag_bad_input(tagged: tuple[CLI, Path]) -> None:
    cli, _src = tagged
    assert "nothing to do" in one_line_error(cli("tag", "latest", check=False), 2)
    assert "cannot be combined" in one_line_error(cli("tag", "latest", "--set", "x", "--add", "y", check=False), 2)
    assert "no snapshot matches" in one_line_error(cli("tag", "abcdef01", "--add", "x", check=False), 2)
    assert "invalid snapshot id" in one_line_error(cli("tag", "zz", "--add", "x", check=False), 2)
    before = _snapshot_files(cli.repo)
    prefix = ambiguous_prefix(cli.repo)
    assert "is ambiguous" in one_line_error(cli("tag", prefix, "--add", "x", check=False), 2)
    assert before <= _snapshot_files(cli.repo)  # nothing was removed by the failed commands
    proc = cli("tag", "--add", "x", check=False)
    assert proc.returncode == 2 and b"SNAPSHOT" in proc.stderr
