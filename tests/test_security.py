"""What the storage provider sees, and what a hostile repository can make restore do.

Confidentiality is checked on the real repository bytes; hostile trees are forged with the
Repository API (as an attacker holding the key could) and restored by the real CLI.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
from fastrepo import init_fast
from support.cli import CLI, PASSWORD

from backupfs.backends.local import LocalBackend
from backupfs.format.pack import DATA
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, FILE, SYMLINK, Node
from backupfs.ops.treeview import lookup
from backupfs.repository.repo import Repository

MARKER = "Zq7xNeedleQv3k"


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    """conftest's `cli` on a repository whose key is cheap to unlock (fastrepo.py says why)."""
    init_fast(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


def all_repo_bytes(repo: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file())


def test_marker_appears_in_no_repository_file(cli: CLI, tmp_path: Path) -> None:
    mark = MARKER.encode()
    src = tmp_path / "src"
    secret_dir = src / f"dir-{MARKER}"
    secret_dir.mkdir(parents=True)
    # compressible context (lz4 would keep literal runs) and incompressible context (stored raw)
    (src / "notes.txt").write_bytes((f"line with {MARKER} inside\n" * 5000).encode())
    noise = blake3.blake3(b"noise").digest(length=256 * 1024)
    (src / "raw.bin").write_bytes(noise[:1000] + mark + noise[1000:])
    (secret_dir / f"file-{MARKER}.txt").write_bytes(b"x")
    os.symlink(f"/target/{MARKER}", src / "link")
    os.setxattr(src / "notes.txt", b"user.note", mark)
    cli("backup", src, "--host", f"host-{MARKER}", "--tag", f"tag-{MARKER}", "--exclude", f"*.{MARKER}")
    cli("key", "add", env={"BACKUPFS_NEW_PASSWORD": f"pw-{MARKER}"})

    data = all_repo_bytes(cli.repo)
    assert len(data) > 256 * 1024
    for needle in (mark, mark.lower(), MARKER.encode("utf-16-le"), str(src).encode()):
        assert needle not in data, needle
    assert all(mark not in os.fsencode(p.name) for p in cli.repo.rglob("*"))
    # the CLI, holding the password, sees everything
    assert f"host-{MARKER}".encode() in cli("snapshots").stdout
    assert f"file-{MARKER}".encode() in cli("ls", "latest").stdout


def _chunks(repo_path: Path, path: Path) -> list[tuple[int, bytes]]:
    """(offset, blob id) of the chunks of `path` in the latest snapshot."""
    repo = Repository.open(LocalBackend(str(repo_path)), PASSWORD.encode())
    try:
        repo.load_index()
        _sid, snap = repo.find_snapshot("latest")
        return lookup(repo, snap.tree, str(path)).content or []
    finally:
        repo.close()


def test_no_known_plaintext_ids(cli: CLI, tmp_path: Path) -> None:
    """The same files in two repositories (two master keys) are cut at different places and
    stored under different ids: the storage provider cannot recognise a file it knows by the
    ids, sizes or names it sees. A constant id key, or a constant chunker seed, fails this."""
    src = tmp_path / "src"
    src.mkdir()
    small = blake3.blake3(b"small").digest(length=100_000)  # one chunk, wherever the cuts fall
    known = blake3.blake3(b"known").digest(length=6 * 1024 * 1024)  # several chunks
    (src / "small.bin").write_bytes(small)
    (src / "known.bin").write_bytes(known)
    init_fast(tmp_path / "repo2")
    other = CLI(tmp_path / "repo2", cli.env)
    for c in (cli, other):
        c("backup", src)

    small_ids = [_chunks(c.repo, src / "small.bin") for c in (cli, other)]
    assert [len(ids) for ids in small_ids] == [1, 1]
    assert small_ids[0][0][1] != small_ids[1][0][1]  # keyed ids: the id key differs
    assert blake3.blake3(small).digest() not in (small_ids[0][0][1], small_ids[1][0][1])
    cuts = [[off for off, _bid in _chunks(c.repo, src / "known.bin")] for c in (cli, other)]
    assert len(cuts[0]) > 2 and len(cuts[1]) > 2
    assert cuts[0] != cuts[1]  # seeded chunker: the boundaries differ
    names = [{p.name for p in (c.repo / "data").rglob("*") if p.is_file()} for c in (cli, other)]
    assert names[0] and not names[0] & names[1]
    data = all_repo_bytes(cli.repo)
    assert blake3.blake3(known).digest() not in data and blake3.blake3(known).hexdigest().encode() not in data


def test_repository_file_modes(cli: CLI, tmp_path: Path) -> None:
    """Key files hold the password-wrapped master key: offline guessing needs them, so 0600."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    cli("backup", src)
    cli("key", "add", env={"BACKUPFS_NEW_PASSWORD": "second"})
    keys = list((cli.repo / "keys").iterdir())
    assert len(keys) == 2
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for p in [cli.repo, *cli.repo.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        assert mode & 0o077 == 0, f"{p} is accessible to other users: {oct(mode)}"


# --------------------------------------------------------------------------- hostile repositories


def _file(repo: Repository, name: bytes, data: bytes = b"written by a hostile tree\n") -> Node:
    blob_id, _ = repo.save_blob(DATA, data)
    return Node(name=name, type=FILE, mode=0o644, size=len(data), content=[(0, blob_id)])


def _forge_snapshot(repo_path: Path, make_entries: Callable[[Repository], list[Node]]) -> str:
    """A snapshot of /x whose tree holds the entries made, written with the real key (as a bug,
    or a thief of the password, could)."""
    repo = Repository.open(LocalBackend(str(repo_path)), PASSWORD.encode())
    try:
        repo.load_index()
        x = repo.save_tree(make_entries(repo))
        root = repo.save_tree([Node(name=b"x", type=DIR, mode=0o755, subtree=x)])
        repo.flush()
        return repo.save_snapshot(Snapshot(time_ns=time.time_ns(), host="h", user="u", paths=["/x"], tree=root))
    finally:
        repo.close()


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_hostile_tree_cannot_escape_the_target(cli: CLI, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    target = work / "target"
    target.mkdir(parents=True)
    before = _listing(tmp_path / "work"), _listing(outside)

    def entries(repo: Repository) -> list[Node]:
        inner = repo.save_tree([_file(repo, b"file")])
        escape_dir = repo.save_tree([_file(repo, b"escaped")])
        return [
            _file(repo, b"../escape"),
            _file(repo, b"../../escape"),
            _file(repo, b"a/b"),
            _file(repo, b".."),
            _file(repo, b"."),
            _file(repo, b""),
            _file(repo, b"nul\0byte"),
            _file(repo, b"fine.txt"),
            # a symlink out of the target, then a directory and a file of the same name "inside" it
            Node(name=b"link", type=SYMLINK, mode=0o777, link_target=str(outside).encode()),
            Node(name=b"link", type=DIR, mode=0o755, subtree=inner),
            Node(name=b"flink", type=SYMLINK, mode=0o777, link_target=str(outside / "victim").encode()),
            _file(repo, b"flink"),
            # a directory called ".." holding a file, at the top and one level down
            Node(name=b"..", type=DIR, mode=0o755, subtree=escape_dir),
            Node(
                name=b"dotdot",
                type=DIR,
                mode=0o755,
                subtree=repo.save_tree([Node(name=b"..", type=DIR, mode=0o755, subtree=escape_dir)]),
            ),
        ]

    _forge_snapshot(cli.repo, entries)

    proc = cli("restore", "latest", "--target", target, check=False)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 4, err
    assert "Traceback" not in err and "internal error" not in err
    for name in ("../escape", "a/b", "..", ".", "", "nul\\x00byte"):
        assert f"/x: entry '{name}' left out: its name" in err, err
    assert "/x/dotdot: entry '..' left out" in err and "entry 'link' left out: another entry" in err
    # nothing outside the target changed
    assert _listing(outside) == before[1] == set()
    assert {p for p in _listing(work) if not p.startswith("target")} == before[0] - {"target"}
    assert not list(tmp_path.rglob("escape*"))
    restored = target / "x"
    assert (restored / "fine.txt").read_bytes() == b"written by a hostile tree\n"
    assert (restored / "link").is_symlink() and (restored / "flink").is_symlink()
    assert not (outside / "victim").exists() and not (outside / "file").exists()


def test_hostile_metadata_costs_only_its_entry(cli: CLI, tmp_path: Path) -> None:
    """Values no real file has (NUL in a symlink target or xattr name, a 2**40 uid, a device number
    or size out of range, a directory without listing) give one error each, never a crash."""
    big = 2**63 - 1

    def entries(repo: Repository) -> list[Node]:
        return [
            Node(name=b"nul_link", type=SYMLINK, mode=0o777, link_target=b"a\0b"),
            Node(name=b"empty_link", type=SYMLINK, mode=0o777, link_target=b""),
            Node(name=b"huge_rdev", type="c", mode=0o600, rdev=big),
            Node(name=b"dir_without_listing", type=DIR, mode=0o755),
            _with(_file(repo, b"nul_xattr"), xattrs=[(b"user.a\0b", b"v")]),
            _with(_file(repo, b"huge_uid"), uid=2**40, gid=2**40),
            _with(_file(repo, b"huge_times"), mtime_ns=big, atime_ns=-big),
            _with(_file(repo, b"huge_size"), size=2**62),
            _with(_file(repo, b"odd_mode"), mode=0o177777),
            _file(repo, b"fine.txt"),
        ]

    _forge_snapshot(cli.repo, entries)
    target = tmp_path / "target"
    proc = cli("restore", "latest", "--target", target, check=False)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 4, err
    assert "Traceback" not in err and "internal error" not in err, err
    for name in ("nul_link", "huge_rdev", "nul_xattr", "huge_uid", "huge_size"):
        assert f"/x/{name}:" in err, err
    assert (target / "x" / "fine.txt").read_bytes() == b"written by a hostile tree\n"
    assert (target / "x" / "dir_without_listing").is_dir()  # restored empty, and said so
    assert "/x/dir_without_listing: restored empty: it is a folder without a listing" in err
    for cmd in (["ls", "-l", "latest"], ["ls", "--json", "latest"]):
        listed = cli(*cmd, check=False)  # every entry listed, the repaired ones named on stderr
        assert listed.returncode == 4 and b"Traceback" not in listed.stderr, listed.stderr
        assert listed.stdout.count(b"/x/") == 10 and b"/x/huge_uid: uid 1099511627776" in listed.stderr
    assert cli("snapshots").returncode == 0
    checked = cli("check", check=False)
    assert checked.returncode == 4
    assert b"/x/dir_without_listing: cannot be read: it is a folder without a listing" in checked.stderr


def _with(node: Node, **changes: object) -> Node:
    for k, v in changes.items():
        setattr(node, k, v)
    return node


def test_restore_into_planted_symlinks(cli: CLI, tmp_path: Path) -> None:
    """Someone with write access to the target plants symlinks where restore will put entries:
    they are replaced (renamed over, unlinked), never followed; --overwrite never keeps them."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "file.txt").write_bytes(b"from the backup\n")
    (src / "sub" / "inner.txt").write_bytes(b"inner\n")
    cli("backup", src)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"untouched\n")

    def plant(target: Path, first_component: bool) -> Path:
        dst = target / str(src).lstrip("/")
        if first_component:  # the first folder of the restore is a symlink out of the target
            target.mkdir()
            (target / str(src).lstrip("/").split("/")[0]).symlink_to(outside)
        else:  # a file and a folder inside the restored tree are symlinks out of it
            dst.mkdir(parents=True)
            (dst / "file.txt").symlink_to(outside / "victim.txt")
            (dst / "sub").symlink_to(outside)
        return dst

    for n, first_component in enumerate((True, False)):
        target = tmp_path / f"never{n}"
        plant(target, first_component)
        proc = cli("restore", "latest", "--target", target, "--overwrite", "never", check=False)
        assert proc.returncode == 1 and b"Traceback" not in proc.stderr and b"kept (--overwrite never)" in proc.stderr
        assert _listing(outside) == {"victim.txt"} and (outside / "victim.txt").read_bytes() == b"untouched\n"

        target = tmp_path / f"always{n}"
        dst = plant(target, first_component)
        cli("restore", "latest", "--target", target)
        assert _listing(outside) == {"victim.txt"} and (outside / "victim.txt").read_bytes() == b"untouched\n"
        assert not (dst / "file.txt").is_symlink() and (dst / "file.txt").read_bytes() == b"from the backup\n"
        assert not (dst / "sub").is_symlink() and (dst / "sub" / "inner.txt").read_bytes() == b"inner\n"
        assert not any(p.name.startswith(".backupfs-") for p in dst.iterdir())


@pytest.mark.parametrize("path", ["../..", "/x/../..", "a/../../etc"])
def test_snapshot_subpath_with_dotdot_is_refused(cli: CLI, tmp_path: Path, path: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    cli("backup", src)
    proc = cli("restore", f"latest:{path}", "--target", tmp_path / "t", check=False)
    assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1 and proc.stderr.startswith(b"backupfs: ")
    assert not (tmp_path / "t").exists() or not list((tmp_path / "t").iterdir())
