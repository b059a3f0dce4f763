"""`backupfs copy` and `init --copy-chunker-params` through the real CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.cli import CLI, PASSWORD
from support.rest_server import RestServer
from support.richtree import rsync_diff


def _json(proc_stdout: bytes) -> dict[str, object]:
    out: dict[str, object] = json.loads(proc_stdout.splitlines()[-1])
    return out


def _snapshots(cli: CLI) -> list[dict[str, object]]:
    out: list[dict[str, object]] = json.loads(cli("snapshots", "--json").stdout)
    return out


def _files(repo: Path, sub: str) -> set[str]:
    return {str(p.relative_to(repo)) for p in (repo / sub).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[CLI, Path]:
    """A source repository with two snapshots; tests only read it (copying back adds nothing)."""
    tmp_path = tmp_path_factory.mktemp("copy-source")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPFS_")}
    env.update(BACKUPFS_PASSWORD=PASSWORD, HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    src = tmp_path / "data"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("alpha\n" * 1000)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    (src / "docs" / "link").symlink_to("a.txt")
    os.chmod(src / "docs" / "a.txt", 0o640)
    cli = CLI(tmp_path / "src-repo", env)
    cli("init")
    cli("backup", src, "--tag", "first")
    (src / "docs" / "b.txt").write_text("bravo\n")
    (src / "more.bin").write_bytes(os.urandom(1 << 20))
    cli("backup", src, "--tag", "second")
    return cli, src


def test_copy_is_complete_and_idempotent(source: tuple[CLI, Path], make_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src_cli, data = source
    dst = make_cli(tmp_path / "dst-repo")
    dst("init", env={"BACKUPFS_PASSWORD": "another password"})
    from_env = {"BACKUPFS_PASSWORD": "another password", "BACKUPFS_FROM_PASSWORD": PASSWORD}

    # a filter first: only the snapshot tagged "first"
    out = _json(dst("copy", "--from-repo", src_cli.repo, "--tag", "first", "--json", env=from_env).stdout)
    assert out["snapshots_copied"] == 1

    out = _json(dst("copy", "--from-repo", src_cli.repo, "--json", env=from_env).stdout)
    assert out["snapshots_copied"] == 1 and out["snapshots_skipped"] == 1
    # the second snapshot was diffed against the first's copy: only new data was read
    assert 1 << 20 <= int(out["bytes_read"]) < 2 << 20  # type: ignore[call-overload]
    assert int(out["trees_written"]) >= 2  # type: ignore[call-overload]  # the root and docs/ changed

    src_snaps = _snapshots(src_cli)
    dst_cli = make_cli(tmp_path / "dst-repo")
    dst_cli.env = {**dst_cli.env, "BACKUPFS_PASSWORD": "another password"}
    dst_snaps = _snapshots(dst_cli)
    assert [(s["time"], s["paths"], s["tags"], s["hostname"]) for s in src_snaps] == [
        (s["time"], s["paths"], s["tags"], s["hostname"]) for s in dst_snaps
    ]
    assert dst_snaps[1]["parent"] == dst_snaps[0]["id"]  # parent links point inside the destination

    before = {sub: _files(dst_cli.repo, sub) for sub in ("snapshots", "data", "index")}
    out = _json(dst("copy", "--from-repo", src_cli.repo, "--json", env=from_env).stdout)
    assert out["snapshots_copied"] == 0 and out["snapshots_skipped"] == 2 and out["data_added"] == 0
    assert out["trees_written"] == 0
    assert {sub: _files(dst_cli.repo, sub) for sub in ("snapshots", "data", "index")} == before

    target = tmp_path / "restored"
    dst_cli("restore", "latest", "--target", target)
    assert rsync_diff(data, target / str(data).lstrip("/")) == ""
    dst_cli("check", "--read-data")

    # copying back the other way recognises the originals: nothing to do
    back = _json(
        src_cli(
            "copy",
            "--from-repo",
            dst_cli.repo,
            "--json",
            env={"BACKUPFS_FROM_PASSWORD": "another password"},
        ).stdout
    )
    assert back["snapshots_copied"] == 0 and back["snapshots_skipped"] == 2


def test_copy_chunker_params_make_backups_deduplicate(source: tuple[CLI, Path], make_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src_cli, data = source
    env = {"BACKUPFS_FROM_PASSWORD": PASSWORD}
    alike = make_cli(tmp_path / "alike")
    alike("init", "--copy-chunker-params", "--from-repo", src_cli.repo, env=env)
    unlike = make_cli(tmp_path / "unlike")
    unlike("init")
    for cli in (alike, unlike):
        cli("copy", "--from-repo", src_cli.repo, "latest", env=env)
    added = {}
    for name, cli in (("alike", alike), ("unlike", unlike)):
        summary = _json(cli("backup", "--force", data, "--json").stdout)
        added[name] = int(summary["data_added"])  # type: ignore[call-overload]
    assert added["alike"] < 64 << 10, added  # trees only
    assert added["unlike"] > 3 << 20, added  # every chunk cut differently


def test_copy_errors_are_clear(source: tuple[CLI, Path], make_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src_cli, _data = source
    dst = make_cli(tmp_path / "dst")
    dst("init")
    proc = dst("copy", "--from-repo", src_cli.repo, check=False, env={"BACKUPFS_FROM_PASSWORD": "wrong"})
    assert proc.returncode == 12 and b"source repository" in proc.stderr
    proc = dst("copy", check=False)
    assert proc.returncode == 2 and b"--from-repo" in proc.stderr
    proc = dst("copy", "--from-repo", tmp_path / "nowhere", check=False, env={"BACKUPFS_FROM_PASSWORD": "x"})
    assert proc.returncode == 10
    proc = src_cli("copy", "--from-repo", src_cli.repo, check=False, env={"BACKUPFS_FROM_PASSWORD": PASSWORD})
    assert proc.returncode == 2 and b"same repository" in proc.stderr


def test_copy_to_an_append_only_rest_server(source: tuple[CLI, Path], make_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The 3-2-1 setup of docs/server.md: a nightly copy to an off-site append-only server."""
    src_cli, data = source
    env = {"BACKUPFS_FROM_PASSWORD": PASSWORD}
    with RestServer(tmp_path / "srv", "--append-only") as srv:
        offsite = make_cli(srv.url("offsite"))
        offsite("init", "--copy-chunker-params", "--from-repo", src_cli.repo, env=env)
        assert _json(offsite("copy", "--from-repo", src_cli.repo, "--json", env=env).stdout)["snapshots_copied"] == 2
        again = _json(offsite("copy", "--from-repo", src_cli.repo, "--json", env=env).stdout)
        assert again["snapshots_copied"] == 0 and again["data_added"] == 0
        target = tmp_path / "restored"
        offsite("restore", "latest", "--target", target)
    assert rsync_diff(data, target / str(data).lstrip("/")) == ""
