"""Damaged repositories: detection, naming what is lost, restoring what is not, never crashing.

The damage is done to real repository files on disk; blobs are located through the Repository
API (read-only) so one flipped byte hits exactly the file under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
from fastrepo import init_fast
from support.cli import CLI, PASSWORD
from support.richtree import rsync_diff

from backupfs.backends.local import LocalBackend
from backupfs.format.tree import DIR
from backupfs.ops.treeview import lookup
from backupfs.repository.repo import Repository

MiB = 1024 * 1024
EXIT_CODES = {0, 1, 2, 3, 4, 10, 11, 12, 13, 129, 130, 143}  # architecture.md section 2


def rand(n: int, seed: int) -> bytes:
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)


def make_env(base: Path) -> dict[str, str]:
    """A fresh cache per test: a damaged file must be read, not served from a warm cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPFS_")}
    env.update(BACKUPFS_PASSWORD=PASSWORD, HOME=str(base / "home"), XDG_CACHE_HOME=str(base / "cache"))
    return env


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A source tree and a repository holding one snapshot of it; tests damage copies."""
    base = tmp_path_factory.mktemp("corruption")
    src = base / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "hl").mkdir()
    (src / "victim.bin").write_bytes(rand(2 * MiB, 1))
    (src / "other.bin").write_bytes(rand(1 * MiB, 2))
    (src / "small.txt").write_bytes(b"small and fine\n")
    (src / "dir" / "nested.txt").write_bytes(b"nested\n" * 100)
    (src / "dir" / "sub" / "deeper.bin").write_bytes(rand(300_000, 3))
    (src / "hl" / "a").write_bytes(rand(200_000, 4))
    os.link(src / "hl" / "a", src / "hl" / "b")
    cli = CLI(base / "repo", make_env(base))
    init_fast(base / "repo")
    cli("backup", src)
    return src, base / "repo"


@pytest.fixture
def damaged(template: tuple[Path, Path], tmp_path: Path) -> tuple[CLI, Path]:
    """A private copy of the template repository, and a CLI bound to it."""
    src, repo = template
    shutil.copytree(repo, tmp_path / "repo")
    return CLI(tmp_path / "repo", make_env(tmp_path)), src


def _open(repo: Path) -> Repository:
    r = Repository.open(LocalBackend(str(repo)), PASSWORD.encode())
    r.load_index()
    return r


def blob_places(repo: Path, path: Path | str) -> list[tuple[Path, int, int]]:
    """(pack file, offset, length) of every content blob of file `path` (or of a directory's tree)."""
    r = _open(repo)
    try:
        _sid, snap = r.find_snapshot("latest")
        node = lookup(r, snap.tree, str(path))
        ids = [node.subtree] if node.type == DIR and node.subtree else [bid for _o, bid in node.content or ()]
        places = []
        for bid in ids:
            loc = r.index.lookup(bid)
            assert loc is not None
            pack = loc.pack_id.hex()
            places.append((repo / "data" / pack[:2] / pack, loc.offset, loc.length))
        return places
    finally:
        r.close()


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.chmod(0o600)
    path.write_bytes(bytes(data))


def assert_clean_failure(proc: subprocess.CompletedProcess[bytes], code: int) -> str:
    """Exit code as documented, a final `backupfs: ` line, no traceback."""
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.splitlines()[-1].startswith("backupfs: "), err
    return err


def test_flipped_byte_in_data_pack(damaged: tuple[CLI, Path], tmp_path: Path) -> None:
    cli, src = damaged
    (pack, off, length), *_ = blob_places(cli.repo, src / "victim.bin")
    flip(pack, off + length // 2)

    proc = cli("check", "--read-data", check=False)
    err = assert_clean_failure(proc, 4)
    assert pack.name in err  # names the pack ...
    affected = [line for line in err.splitlines() if line.startswith("affected:")]
    assert any(line.endswith(str(src / "victim.bin")) for line in affected), err  # ... and what it costs
    assert not any("other.bin" in line or "small.txt" in line for line in affected), err  # and nothing more

    target = tmp_path / "target"
    proc = cli("restore", "latest", "--target", target, check=False)
    err = assert_clean_failure(proc, 4)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(src / "victim.bin") in errors[0], err
    dst = target / str(src).lstrip("/")
    assert not (dst / "victim.bin").exists()  # never a silently wrong file
    assert rsync_diff(src, dst).splitlines() == [">f+++++++++ victim.bin"]

    proc = cli("cat", "latest", src / "victim.bin", check=False)
    assert_clean_failure(proc, 4)
    assert cli("cat", "latest", src / "other.bin").stdout == (src / "other.bin").read_bytes()


def test_damaged_hardlinked_file_leaves_no_name_behind(damaged: tuple[CLI, Path], tmp_path: Path) -> None:
    """Every name of a damaged inode is reported; none survives with partial content."""
    cli, src = damaged
    (pack, off, length), *_ = blob_places(cli.repo, src / "hl" / "a")
    flip(pack, off + length // 2)
    target = tmp_path / "target"
    err = assert_clean_failure(cli("restore", "latest", "--target", target, check=False), 4)
    dst = target / str(src).lstrip("/")
    assert not (dst / "hl" / "a").exists() and not (dst / "hl" / "b").exists()
    for name in ("a", "b"):
        assert any(line.startswith("error:") and str(src / "hl" / name) in line for line in err.splitlines()), err
    assert (dst / "other.bin").read_bytes() == (src / "other.bin").read_bytes()


def test_damaged_tree_blob(damaged: tuple[CLI, Path], tmp_path: Path) -> None:
    """A damaged directory listing costs that directory only, and every command says which."""
    cli, src = damaged
    (pack, off, length), *_ = blob_places(cli.repo, src / "dir")
    flip(pack, off + length // 2)

    err = assert_clean_failure(cli("ls", "latest", check=False), 4)
    assert pack.name[:16] in err or str(src / "dir") in err
    err = assert_clean_failure(cli("check", check=False), 4)
    assert str(src / "dir") in err
    err = assert_clean_failure(cli("check", "--read-data", check=False), 4)
    assert pack.name in err

    target = tmp_path / "target"
    err = assert_clean_failure(cli("restore", "latest", "--target", target, check=False), 4)
    assert str(src / "dir") in err
    dst = target / str(src).lstrip("/")
    assert (dst / "victim.bin").read_bytes() == (src / "victim.bin").read_bytes()
    assert not (dst / "dir" / "nested.txt").exists()


def test_damaged_old_snapshot_does_not_stop_backups(damaged: tuple[CLI, Path]) -> None:
    """A bit-rotted snapshot file is reported, but the others are listed and new backups work."""
    cli, src = damaged
    (old,) = (cli.repo / "snapshots").iterdir()
    cli("backup", src / "dir")
    _damage(old, "random")
    proc = cli("snapshots", check=False)
    err = assert_clean_failure(proc, 4)
    assert old.name in err and str(src / "dir").encode() in proc.stdout
    proc = cli("backup", src)  # the damaged snapshot cannot be its parent: everything is read again
    assert f"warning: snapshot {old.name[:8]} is unreadable".encode() in proc.stderr
    listing, error = cli("snapshots", "--json", check=False).stdout.splitlines()  # --json: the failure last
    assert len(json.loads(listing)) == 2 and json.loads(error)["code"] == 4
    err = assert_clean_failure(cli("check", check=False), 4)
    assert old.name in err


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "random":
        data = os.urandom(len(data))
    path.chmod(0o600)
    path.write_bytes(data)


def _target_file(repo: Path, kind: str) -> Path:
    if kind == "config":
        return repo / "config"
    if kind in ("data pack", "tree pack"):
        r = _open(repo)
        try:
            want = 0 if kind == "data pack" else 1
            packs = {loc.pack_id.hex() for _bid, loc in r.index.items() if loc.type == want}
        finally:
            r.close()
        name = sorted(packs)[0]
        return repo / "data" / name[:2] / name
    folder = {"index": "index", "snapshot": "snapshots", "key": "keys"}[kind]
    (only,) = (repo / folder).iterdir()
    return only


# kind -> expected exit code of (snapshots, ls, restore, check --read-data). A damaged index file
# is skipped with a warning and its packs are read from their headers: only check fails.
EXPECTED = {
    "data pack": (0, 0, 4, 4),
    "tree pack": (0, 4, 4, 4),
    "index": (0, 0, 0, 4),
    "snapshot": (4, 4, 4, 4),
    "key": (4, 4, 4, 4),
    "config": (4, 4, 4, 4),
}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "random"])
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_damaged_repository_files(damaged: tuple[CLI, Path], tmp_path: Path, kind: str, how: str) -> None:
    """Every command gives one clear line and a documented exit code, never a traceback."""
    cli, _src = damaged
    victim = _target_file(cli.repo, kind)
    _damage(victim, how)
    commands = [
        ["snapshots"],
        ["ls", "latest"],
        ["restore", "latest", "--target", str(tmp_path / "target")],
        ["check", "--read-data"],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "backupfs", "-r", str(cli.repo), *c],
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for c in commands
    ]
    for cmd, proc, expected in zip(commands, procs, EXPECTED[kind], strict=True):
        out, err_bytes = proc.communicate(timeout=120)
        result = subprocess.CompletedProcess(cmd, proc.returncode, out, err_bytes)
        err = err_bytes.decode(errors="replace")
        assert proc.returncode in EXIT_CODES
        assert "Traceback" not in err and "internal error" not in err, (cmd, err)
        assert proc.returncode == expected, (cmd, err)
        if expected:
            assert_clean_failure(result, expected)
            assert victim.name[:8] in err, (cmd, err)  # the damaged file is named
        elif kind == "index" and cmd[0] != "snapshots":
            assert f"index file {victim.name[:8]} is damaged" in err and "repair index" in err, (cmd, err)
