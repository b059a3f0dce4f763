"""Backup then restore through the real CLI must give back exactly what was saved.

The oracle is rsync -aHAX --checksum (tools/support/richtree.py), independent of backupfs; the explicit
checks below name the properties rsync does not report on its own (sparseness, inode sharing).
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from fastrepo import init_fast
from support.cli import CLI, PASSWORD
from support.richtree import T_FUTURE, make_rich_tree, rsync_diff, sparse_ok

from backupfs.backends.local import LocalBackend
from backupfs.ops.backup import Archiver, BackupOptions
from backupfs.ops.restore import Restorer
from backupfs.repository.repo import Repository

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="ownership, devices and trusted.* xattrs need root")


def restored(target: Path, src: Path | str | bytes) -> Path:
    """Where restore puts an absolute source path: the snapshot's root is `/`."""
    return target / os.fsdecode(src).lstrip("/")


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> tuple[CLI, dict[str, Any], str]:
    """One rich tree and one backup of it for the module: every test only reads them."""
    base = tmp_path_factory.mktemp("roundtrip")
    rich = make_rich_tree(base / "src")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPFS_")}
    env.update(BACKUPFS_PASSWORD=PASSWORD, HOME=str(base / "home"), XDG_CACHE_HOME=str(base / "cache"))
    cli = CLI(base / "repo", env)
    init_fast(base / "repo")
    out = cli("backup", rich["root"], "--json")
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["skipped"] == 0, out.stderr
    return cli, rich, summary["snapshot_id"]


@root_only
def test_rich_tree_round_trip(backed_up: tuple[CLI, dict[str, Any], str], tmp_path: Path) -> None:
    cli, m, _sid = backed_up
    src: Path = m["root"]
    target = tmp_path / "target"
    out = cli("restore", "latest", "--target", target, "--verify")
    dst = restored(target, src)
    assert rsync_diff(src, dst) == ""

    # what rsync alone does not prove, or what deserves a named failure
    for name in ("sparse", "all_hole", "tail_hole"):
        assert sparse_ok(m[name], restored(target, m[name])), f"{name} lost its holes"
    inodes = {os.lstat(restored(target, p)).st_ino for p in m["hardlinks"]}
    assert len(inodes) == 1 and os.lstat(restored(target, m["hardlinks"][0])).st_nlink == 3
    for key in ("long_name", "latin1_name", "newline_name"):
        assert os.path.exists(restored(target, m[key]))
    assert len(os.path.basename(m["long_name"])) == 255
    assert restored(target, m["deep_file"]).read_bytes() == b"30 levels down\n"
    assert stat.S_ISFIFO(os.lstat(restored(target, m["fifo"])).st_mode)
    dev = os.lstat(restored(target, m["chardev"]))
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.lstat(restored(target, m["blockdev"])).st_mode)
    xf = restored(target, m["xattr_file"])
    for k, v in m["xattrs"].items():
        assert os.getxattr(xf, k) == v
    assert os.getxattr(xf, b"trusted.backupfs") == b"trusted value"
    assert os.getxattr(restored(target, m["acl_file"]), "system.posix_acl_access")
    assert os.getxattr(restored(target, m["acl_dir"]), "system.posix_acl_default")
    assert os.lstat(restored(target, m["times"]["future"])).st_mtime_ns == T_FUTURE
    assert os.lstat(restored(target, m["setuid"])).st_mode & 0o7777 == 0o4755
    assert os.lstat(restored(target, m["other_owner"])).st_uid == 1234
    n_files = sum(1 for _ in _regular_files(src))
    assert f"verified {n_files - 2} files".encode() in out.stdout  # hardlinks: one inode, three names


def _regular_files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(root) for f in fs if stat.S_ISREG(os.lstat(Path(d) / f).st_mode)]


@root_only
def test_restore_twice_into_the_same_target(backed_up: tuple[CLI, dict[str, Any], str], tmp_path: Path) -> None:
    """A second restore of the rich tree into the same folder writes nothing and changes
    nothing: every entry (hardlinks, devices, fifos, sparse files, xattrs) is found as it is."""
    cli, m, _sid = backed_up
    src: Path = m["root"]
    target = tmp_path / "t"
    cli("restore", "latest", "--target", target)
    again = json.loads(cli("restore", "latest", "--target", target, "--json").stdout.splitlines()[-1])
    assert (again["files_restored"], again["added"], again["updated"], again["errors"]) == (0, 0, 0, 0)
    assert again["unchanged"] > 20
    assert rsync_diff(src, restored(target, src)) == ""
    for name in ("sparse", "all_hole", "tail_hole"):
        assert sparse_ok(m[name], restored(target, m[name])), f"{name} lost its holes"
    inodes = {os.lstat(restored(target, p)).st_ino for p in m["hardlinks"]}
    assert len(inodes) == 1 and os.lstat(restored(target, m["hardlinks"][0])).st_nlink == 3


def test_restore_again_replaces_what_was_edited(backed_up: tuple[CLI, dict[str, Any], str], tmp_path: Path) -> None:
    """restic 0.17's default (--overwrite always): an edited file gets the snapshot's content
    back; --overwrite never keeps it. (A second restore used to fail on every file.)"""
    cli, m, _sid = backed_up
    target = tmp_path / "t"
    cli("restore", "latest", "--target", target, "--include", str(m["small"]))
    restored(target, m["small"]).write_bytes(b"local edit\n")
    kept = cli("restore", "latest", "--target", target, "--include", str(m["small"]), "--overwrite", "never")
    assert restored(target, m["small"]).read_bytes() == b"local edit\n" and not kept.stderr.count(b"error")
    cli("restore", "latest", "--target", target, "--include", str(m["small"]))
    assert restored(target, m["small"]).read_bytes() == m["small"].read_bytes()


def test_restore_include(backed_up: tuple[CLI, dict[str, Any], str], tmp_path: Path) -> None:
    cli, m, _sid = backed_up
    src: Path = m["root"]
    target = tmp_path / "t"
    cli("restore", "latest", "--target", target, "--include", str(src / "dir"), "--include", str(m["small"]))
    dst = restored(target, src)
    assert sorted(os.listdir(dst)) == ["dir", "small.txt"]
    assert rsync_diff(src / "dir", dst / "dir") == ""
    assert (dst / "small.txt").read_bytes() == m["small"].read_bytes()


def test_restore_include_pattern_deep_inside(backed_up: tuple[CLI, dict[str, Any], str], tmp_path: Path) -> None:
    """A pattern matching only something deep restores the directories leading to it, no more."""
    cli, m, _sid = backed_up
    target = tmp_path / "t"
    cli("restore", "latest", "--target", target, "--include", "leaf.txt")
    dst = restored(target, m["root"])
    found = sorted(str(p.relative_to(dst)) for p in dst.rglob("*"))
    assert found == ["dir", "dir/sub", "dir/sub/subsub", "dir/sub/subsub/leaf.txt"]


def test_restore_of_exact_paths_makes_those_and_the_folders_on_their_way(
    backed_up: tuple[CLI, dict[str, Any], str], tmp_path: Path
) -> None:
    """What a restore drill asks for (ops/verify.py): those files, no sibling, no pattern matching."""
    cli, m, _sid = backed_up
    src: Path = m["root"]
    leaf = next(p for p in (src / "dir").rglob("leaf.txt"))
    repo = Repository.open(LocalBackend(str(cli.repo)), PASSWORD.encode())
    try:
        repo.load_index()
        tree = repo.find_snapshot("latest")[1].tree
        wanted = [os.fsencode(leaf), os.fsencode(m["small"]), os.fsencode(src / "no-such-file")]
        stats = Restorer(repo, tree, str(tmp_path / "t"), only=wanted).run()
    finally:
        repo.close()
    dst = restored(tmp_path / "t", src)
    found = sorted(str(p.relative_to(dst)) for p in dst.rglob("*"))
    assert found == ["dir", "dir/sub", "dir/sub/subsub", "dir/sub/subsub/leaf.txt", "small.txt"]
    assert (stats.files, stats.errors) == (2, [])
    assert (dst / "small.txt").read_bytes() == m["small"].read_bytes()
    with pytest.raises(ValueError):
        Restorer(repo, tree, str(tmp_path / "u"), only=wanted, includes=["*"])


def test_restore_exclude(backed_up: tuple[CLI, dict[str, Any], str], tmp_path: Path) -> None:
    cli, m, _sid = backed_up
    src: Path = m["root"]
    target = tmp_path / "t"
    cli("restore", "latest", "--target", target, "--exclude", "*.bin", "--exclude", str(src / "deep"))
    dst = restored(target, src)
    assert not list(dst.rglob("*.bin"))
    assert not (dst / "deep").exists()
    assert (dst / "small.txt").exists() and (dst / "dir" / "a.txt").exists()
    assert (dst / "sparse" / "sparse64").exists()


def test_restore_subpath(backed_up: tuple[CLI, dict[str, Any], str], tmp_path: Path) -> None:
    """SNAP:PATH restores the contents of PATH straight into the target."""
    cli, m, sid = backed_up
    src: Path = m["root"]
    target = tmp_path / "t"
    cli("restore", f"{sid[:8]}:{src / 'dir'}", "--target", target)
    assert sorted(os.listdir(target)) == ["a.txt", "emptydir", "sub"]
    # rsync compares the top directory too; only its own metadata may differ
    assert rsync_diff(src / "dir" / "sub", target / "sub") == ""
    assert (target / "a.txt").read_bytes() == (src / "dir" / "a.txt").read_bytes()
    bad = cli("restore", f"{sid[:8]}:{src / 'small.txt'}", "--target", tmp_path / "t2", check=False)
    assert bad.returncode == 2 and b"not a directory" in bad.stderr
    missing = cli("restore", f"{sid[:8]}:/no/such/dir", "--target", tmp_path / "t3", check=False)
    assert missing.returncode == 2 and missing.stderr.count(b"\n") == 1


def test_restore_verify_counts_files(backed_up: tuple[CLI, dict[str, Any], str], tmp_path: Path) -> None:
    cli, m, _sid = backed_up
    out = cli(
        "restore", "latest", "--target", tmp_path / "t", "--verify", "--json", "--include", str(m["root"] / "dir")
    )
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["files_verified"] == 2 and summary["errors"] == 0


def test_restore_verify_reads_back_without_forcing_each_file_to_disk(
    backed_up: tuple[CLI, dict[str, Any], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--verify compares what the filesystem gives back with the snapshot; an fsync per file
    (5x the cost of writing and reading a 4 KiB file here) does not change what is read back
    (the page cache), so there is none (docs/usage.md, restore)."""
    cli, _m, sid = backed_up
    synced: list[int] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    repo = Repository.open(LocalBackend(str(cli.repo)), PASSWORD.encode())
    try:
        repo.load_index()
        stats = Restorer(repo, repo.load_snapshot(sid).tree, str(tmp_path / "t"), verify=True).run()
    finally:
        repo.close()
    assert not stats.errors and stats.verified_files > 10, stats
    assert synced == []


def test_restore_keeps_few_files_open_however_large_or_deep_the_folders(tmp_path: Path) -> None:
    """Small files are created, then written in batches; the files waiting for their content
    are bounded, even when reading the repository is slow (a remote one) or the folders nest
    deeply, so a restore stays far below the usual soft limit of 1024 open files."""
    src = tmp_path / "src"
    flat = src / "flat"
    flat.mkdir(parents=True)
    for i in range(1500):
        (flat / f"f{i:04}").write_bytes(os.urandom(64 + i % 300))
    links = src / "links"  # files with two names go one by one (the second waits for the first)
    links.mkdir()
    for i in range(600):
        (links / f"l{i:04}").write_bytes(os.urandom(200))
        os.link(links / f"l{i:04}", links / f"m{i:04}")
    deep = src / "deep"
    for level in range(12):
        deep = deep / f"d{level}"
        deep.mkdir(parents=True)
        for i in range(31):  # just under a batch at every level, then a subfolder
            (deep / f"a{i:02}").write_bytes(os.urandom(100))
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=(1, 8192))
    try:
        _sid, snap = Archiver(repo, BackupOptions(paths=[str(src)])).run()
    finally:
        repo.close()
    repo = Repository.open(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode())
    repo.load_index()
    most_open = 0
    slow_load, slow_many = repo.load_blob, repo.load_data_blobs

    def count_open() -> None:
        nonlocal most_open
        most_open = max(most_open, len(os.listdir("/proc/self/fd")))
        time.sleep(0.002)  # a slow repository: the walk runs far ahead of the writers

    def load_blob(btype: int, blob_id: bytes) -> bytes:
        count_open()
        return slow_load(btype, blob_id)

    def load_data_blobs(blob_ids: list[bytes], gap: int = 1 << 18) -> list[bytes | Exception]:
        count_open()
        return slow_many(blob_ids, gap)

    repo.load_blob = load_blob  # type: ignore[method-assign]
    repo.load_data_blobs = load_data_blobs  # type: ignore[method-assign]
    try:
        stats = Restorer(repo, snap.tree, str(tmp_path / "target")).run()
    finally:
        repo.close()
    assert not stats.errors
    assert most_open < 400, most_open
    for path in src.rglob("*"):
        copy = restored(tmp_path / "target", path)
        assert copy.is_dir() if path.is_dir() else copy.read_bytes() == path.read_bytes(), path
