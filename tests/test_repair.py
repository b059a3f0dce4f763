"""Damage is survivable, and the way back is named (issue 10): readers skip a damaged index or
snapshot file with one warning, `check` ends every error with the command that fixes it, and
`backupfs repair index|packs|snapshots` bring the repository back so that `check` passes again.
Everything runs the real command line on real repositories damaged on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest
from fastrepo import init_fast
from support.cli import CLI, PASSWORD
from support.richtree import rsync_diff

from backupfs.backends.local import LocalBackend
from backupfs.format.tree import DIR
from backupfs.ops.repair import PHASES
from backupfs.ops.treeview import lookup
from backupfs.repository.repo import Repository

MiB = 1 << 20
NO_CRASH = ("Traceback", "internal error")


def rand(n: int, seed: int) -> bytes:
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)


def env_for(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPFS_")}
    env.update(BACKUPFS_PASSWORD=PASSWORD, HOME=str(base / "home"), XDG_CACHE_HOME=str(base / "cache"))
    return env


def clean(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode(errors="replace")
    for bad in NO_CRASH:
        assert bad not in err, err
    return err


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def backup_id(cli: CLI, src: Path) -> str:
    return str(json.loads(cli("backup", src, "--json").stdout.splitlines()[-1])["snapshot_id"])


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """A source folder and a repository with two snapshots of it (the second adds a file)."""
    base = tmp_path_factory.mktemp("repair")
    src = base / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "victim.bin").write_bytes(rand(3 * MiB, 1))
    (src / "other.bin").write_bytes(rand(1 * MiB, 2))
    (src / "small.txt").write_bytes(b"small and fine\n")
    (src / "dir" / "nested.txt").write_bytes(b"nested\n" * 100)
    (src / "dir" / "sub" / "deeper.bin").write_bytes(rand(300_000, 3))
    init_fast(base / "repo")
    cli = CLI(base / "repo", env_for(base))
    first = backup_id(cli, src)
    (src / "later.txt").write_bytes(b"added later\n")
    second = backup_id(cli, src)
    return src, base / "repo", [first, second]


@pytest.fixture
def repo(template: tuple[Path, Path, list[str]], tmp_path: Path) -> tuple[CLI, Path, list[str]]:
    src, path, snaps = template
    shutil.copytree(path, tmp_path / "repo")
    return CLI(tmp_path / "repo", env_for(tmp_path)), src, snaps


def _open(path: Path) -> Repository:
    r = Repository.open(LocalBackend(str(path)), PASSWORD.encode())
    r.load_index()
    return r


def pack_of(repo: Path, path: Path, snap: str = "latest") -> Path:
    """The pack file holding the first blob of file `path` (or the listing of folder `path`)."""
    r = _open(repo)
    try:
        _sid, s = r.find_snapshot(snap)
        node = lookup(r, s.tree, str(path))
        bid = node.subtree if node.type == DIR and node.subtree else (node.content or [(0, b"")])[0][1]
        loc = r.index.lookup(bid)
        assert loc is not None
        name = loc.pack_id.hex()
        return repo / "data" / name[:2] / name
    finally:
        r.close()


def flip_blob(repo: Path, path: Path) -> Path:
    """Flips one byte inside the first chunk of file `path` (the listing of folder `path`);
    returns the pack."""
    r = _open(repo)
    try:
        _sid, s = r.find_snapshot("latest")
        node = lookup(r, s.tree, str(path))
        bid = node.subtree if node.type == DIR else (node.content or [(0, None)])[0][1]
        assert bid is not None
        loc = r.index.lookup(bid)
        assert loc is not None
        name = loc.pack_id.hex()
        pack = repo / "data" / name[:2] / name
        data = bytearray(pack.read_bytes())
        data[loc.offset + loc.length // 2] ^= 0x20
        pack.chmod(0o600)
        pack.write_bytes(bytes(data))
        return pack
    finally:
        r.close()


def restores(cli: CLI, snap: str, src: Path, target: Path) -> None:
    proc = cli("restore", snap, "--target", target, check=False)
    assert proc.returncode == 0, clean(proc)
    assert rsync_diff(src, target / str(src).lstrip("/")) == ""


# ---------------------------------------------------------------------------- damaged index files


@pytest.mark.parametrize("how", ["empty", "bit-rot", "random"])
def test_damaged_index_file_is_skipped_then_repaired(
    repo: tuple[CLI, Path, list[str]], tmp_path: Path, how: str
) -> None:
    cli, src, snaps = repo
    victim = sorted((cli.repo / "index").iterdir())[0]
    data = victim.read_bytes()
    victim.chmod(0o600)
    if how == "empty":
        victim.write_bytes(b"")
    elif how == "bit-rot":
        victim.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    else:
        victim.write_bytes(os.urandom(len(data)))
    name = victim.name[:8]

    # readers go on, with one warning naming the file and the command that replaces it
    proc = cli("restore", "latest", "--target", tmp_path / "t1", check=False)
    err = clean(proc)
    assert proc.returncode == 0, err
    assert err.count(f"index file {name} is damaged") == 1 and "backupfs repair index" in err, err
    assert rsync_diff(src, tmp_path / "t1" / str(src).lstrip("/")) == ""
    assert cli("ls", "latest", check=False).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "new.txt").write_bytes(b"a new file\n")
    assert cli("backup", other, check=False).returncode == 0  # and backups go on

    # check calls it an error, with the fix; prune refuses, naming the same fix
    proc = cli("check", check=False)
    assert proc.returncode == 4
    assert any(name in e and "(fix: `backupfs repair index`" in e for e in errors(clean(proc))), proc.stderr
    proc = cli("prune", check=False)
    err = clean(proc)
    assert proc.returncode == 4 and "refusing to prune" in err and "backupfs repair index" in err, err

    proc = cli("repair", "index", check=False)
    assert proc.returncode == 0, clean(proc)
    assert not victim.exists()
    cli("check", "--read-data")
    cli("prune")
    restores(cli, snaps[-1], src, tmp_path / "t2")


def test_deleted_index_is_rebuilt_and_prune_never_suggests_forgetting(repo: tuple[CLI, Path, list[str]]) -> None:
    """Every index file deleted: check sends the user to `repair index`, not to `forget`;
    prune itself lists the packs again from their headers and deletes nothing in use."""
    cli, _src, snaps = repo
    for f in (cli.repo / "index").iterdir():
        f.unlink()
    packs = {p.name for p in (cli.repo / "data").rglob("*") if p.is_file()}
    proc = cli("check", check=False)
    err = clean(proc)
    assert proc.returncode == 4
    lines = errors(err)
    assert lines and all("listed by no index" in e and "(fix: `backupfs repair index`)" in e for e in lines), err
    assert "forget" not in err
    out = cli("prune", "--dry-run").stdout.decode()
    assert "forget" not in out and "reindex" in out, out
    proc = cli("repair", "index", "--dry-run", "--json")
    summary = json.loads(proc.stdout)
    assert summary["packs"] == len(packs) and len(summary["relisted"]) == len(packs)
    assert not list((cli.repo / "index").iterdir())  # a dry run writes nothing
    cli("repair", "index")
    cli("check", "--read-data")
    assert {p.name for p in (cli.repo / "data").rglob("*") if p.is_file()} == packs
    for sid in snaps:
        cli("restore", sid, "--target", cli.repo.parent / f"t-{sid[:8]}")


def test_latest_is_the_newest_readable_snapshot(repo: tuple[CLI, Path, list[str]], tmp_path: Path) -> None:
    cli, src, (_first, second) = repo
    newest = cli.repo / "snapshots" / second
    newest.chmod(0o600)
    newest.write_bytes(os.urandom(newest.stat().st_size))
    proc = cli("restore", "latest", "--target", tmp_path / "t", check=False)
    err = clean(proc)
    assert proc.returncode == 0, err
    assert f"snapshot {second[:8]} cannot be read" in err and f"backupfs forget {second[:8]}" in err
    assert not (tmp_path / "t" / str(src).lstrip("/") / "later.txt").exists()  # the older one
    assert (tmp_path / "t" / str(src).lstrip("/") / "victim.bin").read_bytes() == (src / "victim.bin").read_bytes()
    proc = cli("check", check=False)
    assert proc.returncode == 4
    assert any(second in e and f"`backupfs forget {second[:8]}`" in e for e in errors(clean(proc)))


# ---------------------------------------------------------------------------- repair index, killed


@pytest.mark.parametrize("phase", [p for p in PHASES if p.startswith("index:") and not p.endswith("partial")])
def test_repair_index_killed_at_each_phase(repo: tuple[CLI, Path, list[str]], tmp_path: Path, phase: str) -> None:
    cli, src, snaps = repo
    victim = sorted((cli.repo / "index").iterdir())[0]
    victim.chmod(0o600)
    victim.write_bytes(b"")
    proc = cli("repair", "index", check=False, env={"BACKUPFS_TEST_CRASH_AT": phase})
    assert proc.returncode == 99, clean(proc)  # the kill landed
    # at every instant the repository reads back whole
    restores(cli, snaps[-1], src, tmp_path / "t1")
    cli("repair", "index")
    cli("check", "--read-data")
    restores(cli, "latest", src, tmp_path / "t2")


@pytest.mark.parametrize("delay_ms", [0, 30])
def test_repair_index_sigkilled_mid_write(repo: tuple[CLI, Path, list[str]], tmp_path: Path, delay_ms: int) -> None:
    """A real SIGKILL once the headers are being read, at once or a little later. A run that
    finishes before the kill lands proves nothing: it is tried again with half the delay."""
    cli, src, _snaps = repo
    delay = delay_ms / 1000
    for _attempt in range(6):
        for f in (cli.repo / "index").iterdir():
            f.unlink()
        proc = subprocess.Popen(
            [sys.executable, "-m", "backupfs", "-r", str(cli.repo), "repair", "index"],
            env=cli.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert b"reading the headers" in line, line
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            break
        assert proc.returncode == 0  # finished before the kill: try again, sooner
        delay /= 2
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    restores(cli, "latest", src, tmp_path / "t1")  # through the headers if no index made it
    cli("repair", "index")
    cli("check", "--read-data")


# ---------------------------------------------------------------------------- damaged data


def test_damaged_chunk_is_stored_again_by_the_next_backup(repo: tuple[CLI, Path, list[str]], tmp_path: Path) -> None:
    """check --read-data finds a damaged chunk; the next backup of the unchanged source stores it
    again instead of reusing it, so the new snapshot restores whole; repair packs then drops the
    damaged pack and every snapshot checks out."""
    cli, src, _snaps = repo
    pack = flip_blob(cli.repo, src / "victim.bin")
    proc = cli("check", "--read-data", check=False)
    err = clean(proc)
    assert proc.returncode == 4
    assert any(pack.name in e and f"(fix: `backupfs repair packs {pack.name[:16]}`" in e for e in errors(err)), err
    summary = json.loads(cli("backup", src, "--json").stdout.splitlines()[-1])
    assert summary["data_added"] >= 512 * 1024, summary  # the damaged chunk (>= the minimum chunk), stored anew
    restores(cli, "latest", src, tmp_path / "t1")
    proc = cli("repair", "packs", pack.name[:16], "--json")
    result = json.loads(proc.stdout)
    assert result["lost"] == [] and result["elsewhere"] >= 1 and result["salvaged"] >= 1, result
    assert not pack.exists()
    cli("check", "--read-data")  # the older snapshots use the new copy now
    restores(cli, "latest", src, tmp_path / "t2")


def test_repair_packs_then_repair_snapshots(repo: tuple[CLI, Path, list[str]], tmp_path: Path) -> None:
    """A chunk lost for good: repair packs keeps the rest of its pack, check then names the
    snapshots and `repair snapshots`; the repaired snapshots keep the file with a hole of zeros
    and everything else whole, and check passes once the originals are gone (--forget)."""
    cli, src, snaps = repo
    pack = flip_blob(cli.repo, src / "victim.bin")
    proc = cli("repair", "packs", pack.name[:12], check=False)
    err = clean(proc)
    assert proc.returncode == 4 and "backupfs repair snapshots" in err, err
    proc = cli("check", check=False)
    err = clean(proc)
    assert proc.returncode == 4
    for sid in snaps:
        assert any(
            f"snapshot {sid[:8]}:" in e and f"`backupfs repair snapshots {sid[:8]}`" in e for e in errors(err)
        ), err
    assert "forget" not in err
    dry = cli("repair", "snapshots", "--dry-run").stdout.decode()
    assert "victim.bin" in dry and "dry run" in dry
    out = json.loads(cli("repair", "snapshots", "--forget", "--json").stdout)
    repaired = [s for s in out["snapshots"] if s["changed"]]
    assert {s["snapshot_id"] for s in repaired} == set(snaps) and all(s["forgotten"] for s in repaired)
    cli("check", "--read-data")
    listed = json.loads(cli("snapshots", "--json").stdout)
    assert {s["repaired"] for s in listed} == set(snaps) and all("repaired" in s["tags"] for s in listed)
    new = next(s["id"] for s in listed if s["repaired"] == snaps[1])
    proc = cli("restore", new, "--target", tmp_path / "t", check=False)
    assert proc.returncode == 0, clean(proc)
    got = tmp_path / "t" / str(src).lstrip("/")
    victim = (got / "victim.bin").read_bytes()
    want = (src / "victim.bin").read_bytes()
    assert len(victim) == len(want) and victim != want
    assert b"\0" * 4096 in victim  # the lost chunk is a hole of zeros
    for name in ("other.bin", "small.txt", "later.txt", "dir/nested.txt", "dir/sub/deeper.bin"):
        assert (got / name).read_bytes() == (src / name).read_bytes(), name


def test_missing_pack_names_the_snapshots_and_index_repair_first(repo: tuple[CLI, Path, list[str]]) -> None:
    """The pack holding the latest snapshot's listings is deleted: check names the snapshots
    that need it and sends to `repair index` first, and only then to `repair snapshots`."""
    cli, src, snaps = repo
    tree_pack = pack_of(cli.repo, src / "dir")
    tree_pack.unlink()
    proc = cli("check", check=False)
    err = clean(proc)
    assert proc.returncode == 4
    missing = [e for e in errors(err) if e.startswith(f"error: pack {tree_pack.name} is in the index but missing")]
    assert len(missing) == 1 and snaps[1][:8] in missing[0], err
    assert "(fix: `backupfs repair index`, then" in missing[0], missing
    assert "forget" not in err
    cli("repair", "index")
    err = clean(cli("check", check=False))
    assert all("`backupfs repair snapshots " in e for e in errors(err)), err


def test_damaged_listing_folder_kept_empty(repo: tuple[CLI, Path, list[str]], tmp_path: Path) -> None:
    """The latest snapshot's listing of dir/ is damaged: repair packs keeps the rest of its pack,
    and repair snapshots keeps dir/ as an empty folder; check passes, the rest restores whole."""
    cli, src, snaps = repo
    pack = flip_blob(cli.repo, src / "dir")
    proc = cli("repair", "packs", pack.name, check=False)
    assert proc.returncode == 4, clean(proc)
    out = cli("repair", "snapshots", "--forget").stdout.decode()
    assert f"snapshot {snaps[1][:8]}: saved as" in out, out
    assert f"folder {src}/dir: listing lost, kept empty" in out, out
    cli("check", "--read-data")
    proc = cli("restore", "latest", "--target", tmp_path / "t", check=False)
    assert proc.returncode == 0, clean(proc)
    got = tmp_path / "t" / str(src).lstrip("/")
    for name in ("victim.bin", "other.bin", "small.txt", "later.txt"):
        assert (got / name).read_bytes() == (src / name).read_bytes(), name
    assert (got / "dir").is_dir() and not list((got / "dir").iterdir())


# ---------------------------------------------------------------------------- stray files


def test_check_reports_foreign_files_and_prune_leaves_them(repo: tuple[CLI, Path, list[str]]) -> None:
    cli, _src, _snaps = repo
    strays = [
        cli.repo / "data" / "ab" / "garbage.txt",
        cli.repo / "index" / "README",
        cli.repo / "data" / "zz" / ("0" * 64),
        cli.repo / "notes.txt",
    ]
    for p in strays:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"not mine\n")
    proc = cli("check", "--json")
    found = json.loads(proc.stdout)["foreign_files"]
    assert sorted(found) == sorted(str(p.relative_to(cli.repo)) for p in strays)
    proc = cli("check")
    assert "data/ab/garbage.txt is not a repository file" in proc.stderr.decode()
    cli("prune")
    assert all(p.exists() for p in strays)
