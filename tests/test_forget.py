"""`backupfs forget` through the real CLI: ids, policies, groups, filters, --dry-run, --json, --prune.

The retention rules themselves are tested against golden files in tests/test_policy.py; these
tests check the wiring: which snapshot files go, what the user is shown, and that nothing changes
when it should not.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.cli import CLI
from test_prune import backup, init_repo, opened, repo_size, repo_state, tree_hashes, verify_restore, write_random

from backupfs.backends.base import FileType
from backupfs.format.snapshot import Snapshot

DAY = 86400 * 10**9


@pytest.fixture
def fcli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    init_repo(tmp_path / "repo")
    return CLI(tmp_path / "repo", {**cli_env, "TZ": "UTC"})


def _ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 10**9


def make_history(cli: CLI, tmp_path: Path, specs: list[Spec]) -> list[str]:
    """Snapshots with chosen (time, host, paths, tags), all of one small backed-up tree."""
    src = tmp_path / "src"
    write_random(src / "a", 1000, random.Random(1))
    first = backup(cli, src)
    ids = []
    with opened(cli.repo, load_index=False) as repo:
        tree = repo.load_snapshot(first).tree
        for when, host, paths, tags in specs:
            ids.append(repo.save_snapshot(Snapshot(_ns(when), host, "user", paths, tree, tags=tags)))
        repo.backend.remove(FileType.SNAPSHOT, first)
    return ids


def snapshot_ids(cli: CLI) -> set[str]:
    return {s["id"] for s in json.loads(cli("snapshots", "--json").stdout)}


Spec = tuple[str, str, list[str], list[str]]
DAILY: list[Spec] = [(f"2024-05-{d:02d} 12:00:00", "alpha", ["/data"], []) for d in range(1, 6)]


def test_forget_by_id_prefix_and_latest(fcli: CLI, tmp_path: Path) -> None:
    ids = make_history(fcli, tmp_path, DAILY)
    out = fcli("forget", ids[1][:8], ids[2]).stdout.decode()
    assert f"removed snapshot {ids[1][:8]}" in out and f"removed snapshot {ids[2][:8]}" in out
    assert snapshot_ids(fcli) == {ids[0], ids[3], ids[4]}
    js = json.loads(fcli("forget", "latest", "--json").stdout)
    assert js == {"message_type": "forget", "dry_run": False, "removed": [ids[4]]}
    assert snapshot_ids(fcli) == {ids[0], ids[3]}
    proc = fcli("forget", "ffffffff", check=False)
    assert proc.returncode == 2 and b"no snapshot matches" in proc.stderr
    assert snapshot_ids(fcli) == {ids[0], ids[3]}


def test_empty_policy_and_mixed_arguments_are_refused(fcli: CLI, tmp_path: Path) -> None:
    ids = make_history(fcli, tmp_path, DAILY)
    proc = fcli("forget", check=False)
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("backupfs: no policy was specified, no snapshots will be removed")
    proc = fcli("forget", ids[0], "--keep-last", "1", check=False)
    assert proc.returncode == 2 and b"not both" in proc.stderr
    proc = fcli("forget", "--keep-last", "0", check=False)  # 0 switches a rule off: still empty
    assert proc.returncode == 2
    proc = fcli("forget", "--keep-within", "3w", check=False)
    assert proc.returncode == 2 and b"weeks are written as 7d" in proc.stderr
    assert snapshot_ids(fcli) == set(ids)


def test_dry_run_prints_every_snapshot_with_its_verdict_and_changes_nothing(fcli: CLI, tmp_path: Path) -> None:
    ids = make_history(fcli, tmp_path, DAILY)
    state = repo_state(fcli.repo)
    out = fcli("forget", "--keep-last", "2", "--keep-daily", "3", "--dry-run").stdout.decode()
    assert repo_state(fcli.repo) == state
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln[:8] in {i[:8] for i in ids}}
    assert len(lines) == 5
    assert "keep" in lines[ids[4][:8]] and "last snapshot, daily snapshot" in lines[ids[4][:8]]
    assert "keep" in lines[ids[2][:8]] and "daily snapshot" in lines[ids[2][:8]]
    assert "last" not in lines[ids[2][:8]]
    for old in ids[:2]:
        assert " remove " in lines[old[:8]]
    assert "Applying policy: keep 2 latest, 3 daily snapshots" in out
    assert "would remove 2 snapshots, keep 3 (dry run" in out
    # and for real
    out = fcli("forget", "--keep-last", "2", "--keep-daily", "3").stdout.decode()
    assert "removed 2 snapshots, kept 3" in out
    assert snapshot_ids(fcli) == set(ids[2:])


def test_json_lists_groups_with_keep_remove_and_reasons(fcli: CLI, tmp_path: Path) -> None:
    specs = [*DAILY, ("2024-05-03 08:00:00", "beta", ["/data"], ["x"]), ("2024-05-04 08:00:00", "beta", ["/data"], [])]
    ids = make_history(fcli, tmp_path, specs)
    js = json.loads(fcli("forget", "--keep-last", "1", "--dry-run", "--json").stdout)
    assert js["message_type"] == "forget" and js["dry_run"] is True
    assert js["policy"] == "keep 1 latest snapshots"
    groups = {g["host"]: g for g in js["groups"]}
    assert set(groups) == {"alpha", "beta"}
    assert groups["alpha"]["paths"] == ["/data"] and groups["alpha"]["tags"] is None
    assert [s["id"] for s in groups["alpha"]["keep"]] == [ids[4]]
    assert {s["id"] for s in groups["alpha"]["remove"]} == set(ids[:4])
    assert groups["alpha"]["reasons"] == [{"snapshot_id": ids[4], "matches": ["last snapshot"]}]
    assert [s["id"] for s in groups["beta"]["keep"]] == [ids[6]]
    assert set(js["removed"]) == set(ids[:4]) | {ids[5]}
    assert snapshot_ids(fcli) == set(ids)


def test_groups_and_filters(fcli: CLI, tmp_path: Path) -> None:
    specs: list[Spec] = [
        ("2024-05-01 10:00:00", "alpha", ["/data"], []),
        ("2024-05-02 10:00:00", "alpha", ["/data"], ["manual"]),
        ("2024-05-03 10:00:00", "alpha", ["/etc"], []),
        ("2024-05-01 11:00:00", "beta", ["/data"], []),
        ("2024-05-02 11:00:00", "beta", ["/data"], []),
    ]
    ids = make_history(fcli, tmp_path, specs)
    # One host's policy never removes another host's snapshots; --host limits what is considered.
    fcli("forget", "--keep-last", "1", "--host", "beta")
    assert snapshot_ids(fcli) == set(ids) - {ids[3]}
    # Grouped by host and paths (the default): alpha /data and alpha /etc are separate groups.
    js = json.loads(fcli("forget", "--keep-last", "1", "--dry-run", "--json").stdout)
    assert set(js["removed"]) == {ids[0]}
    # --group-by host puts alpha's two path sets in one group.
    js = json.loads(fcli("forget", "--keep-last", "1", "--group-by", "host", "--dry-run", "--json").stdout)
    assert set(js["removed"]) == {ids[0], ids[1]}
    # No grouping at all: one group, one survivor.
    js = json.loads(fcli("forget", "--keep-last", "1", "--group-by", "", "--dry-run", "--json").stdout)
    assert set(js["removed"]) == {ids[0], ids[1], ids[4]}
    # --keep-tag keeps what the count rules would drop; --tag and --path filter the candidates.
    js = json.loads(
        fcli("forget", "--keep-last", "1", "--keep-tag", "manual", "--group-by", "host", "-n", "--json").stdout
    )
    assert set(js["removed"]) == {ids[0]}
    js = json.loads(fcli("forget", "--keep-last", "1", "--path", "/etc", "--dry-run", "--json").stdout)
    assert js["removed"] == []
    js = json.loads(fcli("forget", "--keep-last", "1", "--tag", "manual", "-n", "--json").stdout)
    assert js["removed"] == [] and len(js["groups"]) == 1
    # A --keep-tag that matches nothing in a group would delete the whole group: refused.
    proc = fcli("forget", "--keep-tag", "nosuchtag", check=False)
    assert proc.returncode == 1 and b"refusing to delete last snapshot" in proc.stderr
    assert snapshot_ids(fcli) == set(ids) - {ids[3]}


def test_keep_within_counts_back_from_the_newest_snapshot(fcli: CLI, tmp_path: Path) -> None:
    specs: list[Spec] = [(f"2024-05-{d:02d} 12:00:00", "alpha", ["/data"], []) for d in (1, 10, 20, 21, 22)]
    ids = make_history(fcli, tmp_path, specs)
    out = fcli("forget", "--keep-within", "2d1h").stdout.decode()
    assert "within 2d1h" in out
    assert snapshot_ids(fcli) == set(ids[2:])


def test_forget_with_prune_reclaims_space(fcli: CLI, tmp_path: Path) -> None:
    rng = random.Random(2)
    src = tmp_path / "src"
    write_random(src / "old", 2_000_000, rng)
    backup(fcli, src)
    (src / "old").unlink()
    write_random(src / "new", 500_000, rng)
    keep = backup(fcli, src)
    expected = tree_hashes(src)
    before = repo_size(fcli.repo)
    state = repo_state(fcli.repo)
    dry = fcli("forget", "--keep-last", "1", "--prune", "--dry-run").stdout.decode()
    assert "would remove 1 snapshots" in dry and "would free" in dry
    assert repo_state(fcli.repo) == state
    js = [json.loads(ln) for ln in fcli("forget", "--keep-last", "1", "--prune", "--json").stdout.splitlines()]
    assert [m["message_type"] for m in js] == ["forget", "prune"]
    assert js[1]["delete_packs"] >= 2 and js[1]["dry_run"] is False
    assert before - repo_size(fcli.repo) > 1_900_000
    fcli("check", "--read-data")
    verify_restore(fcli, keep, src, expected, tmp_path / "r")
