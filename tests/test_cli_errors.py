"""Errors that say what to do, options checked before any work, and counters that add up."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI
from everyday import ambiguous_prefix, fast_cli, one_line_error, open_repo, snapshot_ids

UNPRIVILEGED = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
as_a_user = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root (to drop its capabilities) and setpriv"
)


def unprivileged(cli: CLI, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    """The CLI as root without capabilities: bound by file permissions like any user."""
    return subprocess.run(
        [*UNPRIVILEGED, sys.executable, "-m", "backupfs", "-r", str(cli.repo), *map(str, args)],
        env=cli.env,
        capture_output=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def backed_up(tmp_path: Path, cli_env: dict[str, str]) -> tuple[CLI, Path]:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data\n")
    cli("backup", src)
    return cli, src


@as_a_user
def test_a_repository_that_cannot_be_read_says_permission_denied(backed_up: tuple[CLI, Path]) -> None:
    cli, _src = backed_up
    cli.repo.chmod(0)
    try:
        proc = unprivileged(cli, "snapshots")
    finally:
        cli.repo.chmod(0o700)
    stderr = one_line_error(proc, 1)
    assert "permission denied" in stderr and "no repository" not in stderr, stderr
    assert f"repository at {cli.repo}" in stderr


def test_restore_into_a_file_says_it_is_not_a_folder(backed_up: tuple[CLI, Path], tmp_path: Path) -> None:
    cli, _src = backed_up
    target = tmp_path / "a-file"
    target.write_text("keep me\n")
    stderr = one_line_error(cli("restore", "latest", "--target", target, check=False), 2)
    assert f"--target {target} is not a folder" in stderr
    assert target.read_text() == "keep me\n"


def test_an_ambiguous_prefix_names_the_snapshots_it_matches(backed_up: tuple[CLI, Path]) -> None:
    cli, _src = backed_up
    prefix = ambiguous_prefix(cli.repo)
    matching = [sid for sid in snapshot_ids(cli) if sid.startswith(prefix)]
    stderr = one_line_error(cli("ls", prefix, check=False), 2)
    assert f"matches {len(matching)} snapshots" in stderr and "give more digits" in stderr
    assert all(sid[:12] in stderr for sid in matching), (matching, stderr)


def test_latest_in_any_case(backed_up: tuple[CLI, Path]) -> None:
    cli, src = backed_up
    for spelling in ("LATEST", "Latest"):
        assert cli("ls", spelling).stdout.decode().splitlines()[-1] == f"{src}/f"


def test_a_bad_option_value_fails_before_any_work(backed_up: tuple[CLI, Path]) -> None:
    """Not after the index and structure checks: before the password is even asked for."""
    cli, _src = backed_up
    env = {"BACKUPFS_PASSWORD": ""}  # an empty password would be refused: it is never reached
    stderr = one_line_error(cli("check", "--read-data-subset", "abc", env=env, check=False), 2)
    assert "invalid --read-data-subset 'abc'" in stderr


def test_counters_add_up(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Every file name is new, changed or unmodified (a hard link's second name too); symlinks,
    devices and fifos are 'others'; and a restore counts what it made of each."""
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_text("a\n")
    os.link(src / "a", src / "sub" / "a-again")
    (src / "b").write_text("b\n")
    os.symlink("a", src / "link")
    os.mkfifo(src / "fifo")

    def summary(*args: str | os.PathLike[str]) -> dict[str, int]:
        doc: dict[str, int] = json.loads(cli(*args, "--json").stdout.splitlines()[-1])
        return doc

    first = summary("backup", src)
    assert (first["files_new"], first["files_changed"], first["files_unchanged"]) == (3, 0, 0)
    assert first["total_files_processed"] == 3 and first["total_bytes_processed"] == 6
    assert (first["others_new"], first["others_changed"], first["others_unchanged"]) == (2, 0, 0)
    assert (first["dirs_new"], first["skipped"]) == (2, 0)
    (src / "b").write_text("bb\n")
    os.unlink(src / "link")
    os.symlink("b", src / "link")
    second = summary("backup", src)
    assert (second["files_new"], second["files_changed"], second["files_unchanged"]) == (0, 1, 2)
    assert (second["others_new"], second["others_changed"], second["others_unchanged"]) == (0, 1, 1)
    restored = summary("restore", "latest", "--target", tmp_path / "r")
    assert (restored["files_restored"], restored["others_restored"]) == (3, 2)


@as_a_user
def test_unreadable_files_are_skipped_not_processed(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_text("fine\n")
    (src / "secret").write_text("no\n")
    (src / "secret").chmod(0)
    proc = unprivileged(cli, "backup", src, "--json")
    assert proc.returncode == 3, proc.stderr
    doc = json.loads(proc.stdout.splitlines()[-1])
    assert (doc["files_new"], doc["total_files_processed"], doc["total_bytes_processed"]) == (1, 1, 5)
    assert doc["skipped"] == 1 and doc["skipped_paths"][0]["path"] == str(src / "secret")


def test_an_absurd_summary_in_a_snapshot_is_not_shown(backed_up: tuple[CLI, Path], tmp_path: Path) -> None:
    """The summary is only shown (snapshots' size, restore's totals): a forged one must not stop them."""
    cli, src = backed_up
    repo = open_repo(cli.repo)
    try:
        _sid, snap = repo.list_snapshots()[-1]
        repo.save_snapshot(dataclasses.replace(snap, host="forged", summary={"total_bytes_processed": "lots"}))
    finally:
        repo.close()
    assert "forged" in cli("snapshots").stdout.decode()
    cli("restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / src.relative_to("/") / "f").read_text() == "data\n"
