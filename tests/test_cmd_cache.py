"""The local cache: CACHEDIR.TAG (so `backup --exclude-caches` skips it), caches of repositories not
opened for 30 days removed automatically, and `backupfs cache [--cleanup]`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from everyday import fast_cli, one_line_error
from support.cli import CLI

from backupfs.ops.excludes import is_cache_dir

DAY = 86400


def _fake_cache(root: Path, name: str, age_days: float) -> Path:
    path = root / name
    (path / "snapshots").mkdir(parents=True)
    (path / "snapshots" / "x").write_bytes(b"y" * 1000)
    when = time.time() - age_days * DAY
    os.utime(path, (when, when))
    return path


def test_cache_folder_is_tagged_and_skipped_by_exclude_caches(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = fast_cli(tmp_path, cli_env)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    cli("backup", src)
    root = Path(cli_env["XDG_CACHE_HOME"]) / "backupfs"
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert is_cache_dir(fd)  # the signature backup tools look for
    finally:
        os.close(fd)
    assert (root / "CACHEDIR.TAG").stat().st_mode & 0o777 == 0o644
    home_cache = Path(cli_env["XDG_CACHE_HOME"])
    cli("backup", home_cache, "--exclude-caches", "--tag", "without")
    cli("backup", home_cache, "--tag", "with")
    listings = {}
    for tag in ("without", "with"):
        sid = next(s["id"] for s in json.loads(cli("snapshots", "--json", "--tag", tag).stdout))
        listings[tag] = cli("ls", sid).stdout.decode().splitlines()
    assert str(root / "CACHEDIR.TAG") in listings["without"]  # the tag itself stays, as restic
    assert not any(line.startswith(f"{root}/") and not line.endswith("CACHEDIR.TAG") for line in listings["without"])
    assert any(line.endswith("/index.cache") for line in listings["with"] if line.startswith(str(root)))


def test_old_caches_go_when_a_repository_is_opened(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = fast_cli(tmp_path, cli_env)
    root = Path(cli_env["XDG_CACHE_HOME"]) / "backupfs"
    old = _fake_cache(root, "a" * 64, 31)
    recent = _fake_cache(root, "b" * 64, 29)
    foreign = _fake_cache(root, "notes", 400)  # not a repository cache: never touched
    cli("snapshots")
    assert not old.exists() and recent.exists() and foreign.exists()
    mine = [p for p in root.iterdir() if len(p.name) == 64 and p != recent]
    assert len(mine) == 1 and time.time() - mine[0].stat().st_mtime < 600  # marked as just used


def test_cache_command_lists_and_cleans_up(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli = fast_cli(tmp_path, cli_env)
    cli("snapshots")
    root = Path(cli_env["XDG_CACHE_HOME"]) / "backupfs"
    _fake_cache(root, "c" * 64, 10)
    doc = json.loads(cli("cache", "--json").stdout)
    assert doc["cache_dir"] == str(root) and doc["removed"] == 0
    fake = next(c for c in doc["caches"] if c["repository_id"] == "c" * 64)
    assert fake["size"] == 1000 and not fake["old"] and fake["last_used"][10] == "T"
    text = cli("cache", "--max-age", "7d").stdout.decode()
    assert "cccccccccc" in text and "yes" in text
    doc = json.loads(cli("cache", "--cleanup", "--max-age", "7", "--json").stdout)  # a bare number: days
    assert doc["removed"] == 1 and not (root / ("c" * 64)).exists()
    assert len(json.loads(cli("cache", "--json", "--no-size").stdout)["caches"]) == 1  # this repository's
    proc = cli("cache", "--max-age", "soon", check=False)
    assert proc.returncode == 2 and b"invalid duration 'soon'" in proc.stderr
    assert "no cache" in one_line_error(cli("cache", "--no-cache", check=False), 2)


def test_cache_needs_no_repository(tmp_path: Path, cli_env: dict[str, str]) -> None:
    nowhere = CLI(tmp_path / "does-not-exist", {**cli_env, "BACKUPFS_PASSWORD": ""})
    assert nowhere("cache").stdout.decode().startswith("no caches in ")
