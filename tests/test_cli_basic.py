"""The everyday path through the real CLI: init, backup, snapshots, ls, cat, restore, check."""

from __future__ import annotations

import json
import os
from pathlib import Path

from support.cli import CLI


def test_backup_restore_roundtrip(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("hello\n")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 5000)
    out = cli("backup", src, "--json")
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["files_new"] == 2 and summary["message_type"] == "summary"

    snaps = json.loads(cli("snapshots", "--json").stdout)
    assert len(snaps) == 1 and snaps[0]["paths"] == [str(src)]

    listing = cli("ls", "latest").stdout.decode().splitlines()
    assert str(src / "sub" / "b.bin") in listing

    assert cli("cat", snaps[0]["short_id"], src / "a.txt").stdout == b"hello\n"

    target = tmp_path / "restored"
    cli("restore", "latest", "--target", target, "--verify")
    assert (target / str(src).lstrip("/") / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    cli("check", "--read-data")


def test_init_twice_is_refused(cli: CLI) -> None:
    proc = cli("init", check=False)
    assert proc.returncode == 1
    assert b"already exists" in proc.stderr and b"Traceback" not in proc.stderr


def test_missing_repository_exit_code(make_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proc = make_cli(tmp_path / "nope")("snapshots", check=False)
    assert proc.returncode == 10
    assert proc.stderr.decode().count("\n") == 1


def test_wrong_password_exit_code(cli: CLI) -> None:
    proc = cli("snapshots", check=False, env={"BACKUPFS_PASSWORD": "wrong"})
    assert proc.returncode == 12
    assert proc.stderr == b"backupfs: wrong password or no key found\n"


def test_prune_sweeps_abandoned_temporary_files(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    cli("backup", src)
    old = cli.repo / "data" / "ab" / ".abcd.tmp-1234-5678"
    fresh = cli.repo / "index" / ".ef01.tmp-1234-9999"
    for p in (old, fresh):
        p.write_bytes(b"half-written")
    os.utime(old, (0, 1_000_000))
    cli("prune")
    assert not old.exists()
    assert fresh.exists()  # might belong to a writer that is only slow
    assert cli("check").returncode == 0


def test_foreign_files_in_the_repository_are_ignored(cli: CLI, tmp_path: Path) -> None:
    """Files no repository writes (notes, editor backups, a copy gone wrong) are not repository
    files: commands neither stumble over them nor delete them."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    cli("backup", src)
    foreign = [cli.repo / "data" / "ab" / "README", cli.repo / "keys" / "notes.txt", cli.repo / "snapshots" / "latest"]
    for p in foreign:
        p.write_bytes(b"not a repository file")
    for args in (("check", "--read-data"), ("snapshots",), ("prune",)):
        proc = cli(*args, check=False)
        assert proc.returncode == 0 and b"error" not in proc.stderr, (args, proc.stderr)
    assert all(p.exists() for p in foreign)
