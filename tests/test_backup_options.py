"""Backup options and everyday commands, through the real CLI on real files.

Also the races a live filesystem brings (a file vanishing or changing type between the directory
listing and the read), driven through the real archiver on real files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from fastrepo import init_fast
from support.cli import CLI, PASSWORD

from backupfs.backends.local import LocalBackend
from backupfs.ops import backup as backup_mod
from backupfs.ops import fsmeta
from backupfs.ops.backup import Archiver, BackupOptions
from backupfs.ops.excludes import CACHEDIR_SIGNATURE
from backupfs.repository.repo import Repository

MiB = 1024 * 1024
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
UNPRIVILEGED = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    """conftest's `cli` on a repository whose key is cheap to unlock (fastrepo.py says why)."""
    init_fast(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


def summary(proc: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def listing(cli: CLI, snap: str = "latest") -> set[str]:
    return set(cli("ls", snap).stdout.decode(errors="surrogateescape").splitlines())


def snapshots(cli: CLI, *args: str) -> list[dict[str, object]]:
    result: list[dict[str, object]] = json.loads(cli("snapshots", "--json", *args).stdout)
    return result


# --------------------------------------------------------------------------- what is backed up


def test_exclude_and_exclude_file(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel in (
        "keep.txt",
        "drop.tmp",
        "sub/keep2.txt",
        "sub/drop2.tmp",
        "node_modules/x.js",
        "build/out.o",
        "b/c.log",
    ):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    patterns = tmp_path / "excludes.txt"
    patterns.write_text(f"# comment line\n\nnode_modules\n{src}/build\n")
    cli("backup", src, "--exclude", "*.tmp", "-e", "*.log", "--exclude-file", patterns)
    found = {p.removeprefix(str(src)) for p in listing(cli) if p.startswith(str(src))}
    assert found == {"", "/keep.txt", "/sub", "/sub/keep2.txt", "/b"}
    (snap,) = snapshots(cli)
    assert snap["excludes"] == ["*.tmp", "*.log", "node_modules", f"{src}/build"]


def test_exclude_caches(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    cache, fake = src / "cache", src / "notcache"
    for d in (cache / "deep", fake):
        d.mkdir(parents=True)
    (cache / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE + b"\n# a cache\n")
    (cache / "blob").write_bytes(b"cached")
    (cache / "deep" / "more").write_bytes(b"cached")
    (fake / "CACHEDIR.TAG").write_bytes(b"Signature: not the right one")
    (fake / "data").write_bytes(b"keep me")
    cli("backup", src, "--exclude-caches")
    found = {p.removeprefix(str(src)) for p in listing(cli) if p.startswith(str(src))}
    assert found == {"", "/cache", "/cache/CACHEDIR.TAG", "/notcache", "/notcache/CACHEDIR.TAG", "/notcache/data"}
    cli("backup", src)  # without the option, caches are kept
    assert f"{cache}/deep/more" in listing(cli)


@root_only
def test_one_file_system(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    mnt = src / "mnt"
    mnt.mkdir(parents=True)
    (src / "here.txt").write_bytes(b"on the source filesystem")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "there.txt").write_bytes(b"on another filesystem")
        cli("backup", src, "--one-file-system", "--tag", "x")
        cli("backup", src, "--tag", "all")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    one_fs = listing(cli, snapshots(cli, "--tag", "x")[0]["id"])  # type: ignore[arg-type]
    assert f"{src}/here.txt" in one_fs and f"{mnt}" in one_fs  # the mount point itself is kept, empty
    assert f"{mnt}/there.txt" not in one_fs
    assert f"{mnt}/there.txt" in listing(cli, snapshots(cli, "--tag", "all")[0]["id"])  # type: ignore[arg-type]


def test_tags_and_host(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    cli("backup", src, "--tag", "b,a", "--tag", "c", "--host", "laptop")
    cli("backup", src, "--tag", "other")
    snap = snapshots(cli, "--host", "laptop")
    assert len(snap) == 1 and snap[0]["tags"] == ["a", "b", "c"] and snap[0]["hostname"] == "laptop"
    assert [s["tags"] for s in snapshots(cli, "--tag", "a,c")] == [["a", "b", "c"]]
    assert [s["tags"] for s in snapshots(cli, "--tag", "other")] == [["other"]]
    assert len(snapshots(cli)) == 2
    # a new host means no parent: the files are read again, not taken from laptop's snapshot
    third = summary(cli("backup", src, "--json", "--host", "desktop"))
    assert third["files_new"] == 1


def test_path_through_a_symlinked_directory(cli: CLI, tmp_path: Path) -> None:
    """A symlink among the folders leading to a backed-up path is resolved; the path itself is not."""
    real = tmp_path / "real"
    (real / "docs").mkdir(parents=True)
    (real / "docs" / "thesis.txt").write_bytes(b"chapter 1\n")
    (tmp_path / "via").symlink_to(real)
    (tmp_path / "linkonly").symlink_to(real / "docs")
    cli("backup", tmp_path / "via" / "docs", tmp_path / "linkonly")
    (snap,) = snapshots(cli)
    assert snap["paths"] == sorted([str(real / "docs"), str(tmp_path / "linkonly")])
    assert cli("cat", "latest", real / "docs" / "thesis.txt").stdout == b"chapter 1\n"
    target = tmp_path / "t"
    cli("restore", "latest", "--target", target)
    assert (target / str(real).lstrip("/") / "docs" / "thesis.txt").read_bytes() == b"chapter 1\n"
    assert os.readlink(target / str(tmp_path).lstrip("/") / "linkonly") == str(real / "docs")


def test_sockets_are_skipped_with_a_warning(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "sock"))
        proc = cli("backup", src)
    finally:
        sock.close()
    assert f"warning: {src / 'sock'}: socket skipped".encode() in proc.stderr
    assert proc.returncode == 0
    assert f"{src}/f" in listing(cli) and f"{src}/sock" not in listing(cli)


# --------------------------------------------------------------------------- streams


def test_stdin(cli: CLI) -> None:
    data = blake3.blake3(b"dump").digest(length=3 * MiB) + b"-- end of dump\n"
    cli("backup", "--stdin", "--stdin-filename", "db.sql", input=data)
    assert listing(cli) == {"/db.sql"}
    assert cli("cat", "latest", "/db.sql").stdout == data


def test_stdin_from_command(cli: CLI) -> None:
    out = cli(
        "backup",
        "--json",
        "--stdin-from-command",
        "--stdin-filename",
        "dump.sql",
        "--",
        "sh",
        "-c",
        "printf one; printf two",
    )
    assert summary(out)["files_new"] == 1
    assert cli("cat", "latest", "/dump.sql").stdout == b"onetwo"
    assert len(snapshots(cli)) == 1


@pytest.mark.parametrize(
    "command,message",
    [
        (["sh", "-c", "echo partial output; exit 3"], "failed with exit code 3; no snapshot was saved"),
        (["sh", "-c", "head -c 20000000 /dev/urandom; exit 1"], "failed with exit code 1; no snapshot was saved"),
        (["/nonexistent/dump-tool"], "cannot run '/nonexistent/dump-tool'"),
    ],
)
def test_stdin_from_failing_command(cli: CLI, command: list[str], message: str) -> None:
    proc = cli("backup", "--stdin-from-command", "--", *command, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.decode().splitlines()
    assert lines[-1].startswith("backupfs: ") and message in lines[-1], lines
    assert "Traceback" not in proc.stderr.decode()
    assert snapshots(cli) == []
    cli("check")


# --------------------------------------------------------------------------- unreadable files


def run_unprivileged(cli: CLI, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    """The CLI with no capabilities: as root but bound by file permissions like any user.

    (Switching to another uid is not possible here: the interpreter lives under /root, mode 0700.)
    """
    return subprocess.run(
        [*UNPRIVILEGED, sys.executable, "-m", "backupfs", "-r", str(cli.repo), *map(str, args)],
        env=cli.env,
        capture_output=True,
        check=False,
        timeout=120,
    )


@root_only
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_unreadable_files_are_listed_and_skipped(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "locked_dir").mkdir(parents=True)
    (src / "readable.txt").write_bytes(b"fine\n")
    (src / "secret").write_bytes(b"nobody may read this\n")
    (src / "secret").chmod(0o000)
    os.link(src / "secret", src / "secret_link")
    (src / "locked_dir" / "inside").write_bytes(b"x")
    (src / "locked_dir").chmod(0o000)
    try:
        proc = run_unprivileged(cli, "backup", src)
    finally:
        (src / "locked_dir").chmod(0o755)
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "Traceback" not in err
    for name in ("secret", "locked_dir"):
        assert f"error: {src / name}: Permission denied" in err, err
    assert f"error: {src / 'secret_link'}: not saved" in err, err  # the second name of the inode
    assert "3 files could not be read" in err
    found = listing(cli)
    assert f"{src}/readable.txt" in found and f"{src}/locked_dir" in found
    assert f"{src}/secret" not in found and f"{src}/secret_link" not in found
    assert len(snapshots(cli)) == 1


# --------------------------------------------------------------------------- unchanged files


def test_unchanged_files_are_not_read_again(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(5):
        (src / "d" / f"f{i}").write_bytes(blake3.blake3(bytes([i])).digest(length=100_000 + i))
    first = summary(cli("backup", "--json", src))
    assert first["files_new"] == 5 and first["bytes_read"] == 5 * 100_000 + 10

    second = summary(cli("backup", "--json", src))
    assert (second["files_unchanged"], second["bytes_read"]) == (5, 0)
    assert int(second["data_added"]) < 4096  # at most new directory listings (listing a dir sets its atime)

    # touched: new mtime, same content -> read again, nothing new stored
    os.utime(src / "d" / "f1", ns=(1, 1_700_000_000_000_000_000))
    # rewritten in place with the old size and mtime restored: only ctime tells
    old = os.stat(src / "d" / "f2")
    (src / "d" / "f2").write_bytes(b"Z" * old.st_size)
    os.utime(src / "d" / "f2", ns=(old.st_atime_ns, old.st_mtime_ns))
    third = summary(cli("backup", "--json", src))
    assert (third["files_changed"], third["files_unchanged"]) == (2, 3)
    assert third["bytes_read"] == 100_001 + 100_002
    assert cli("cat", "latest", src / "d" / "f2").stdout == b"Z" * old.st_size

    forced = summary(cli("backup", "--json", "--force", src))
    assert forced["bytes_read"] == 5 * 100_000 + 10 and int(forced["data_added"]) < 4096


def test_unchanged_folders_reuse_their_stored_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder whose entries all match the parent snapshot's is not encoded again; one changed
    file re-encodes its folder and the folders above it, nothing else."""
    src = tmp_path / "src"
    for a in range(3):
        for b in range(2):
            (src / f"a{a}" / f"b{b}").mkdir(parents=True)
            (src / f"a{a}" / f"b{b}" / "f").write_bytes(bytes([a, b]) * 50)
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw", kdf=(1, 8 * MiB))
    encoded: list[list[bytes]] = []
    real_encode = backup_mod.encode_tree

    def counting(nodes: list[fsmeta.Node]) -> bytes:
        encoded.append(sorted(n.name for n in nodes))
        return real_encode(nodes)

    monkeypatch.setattr(backup_mod, "encode_tree", counting)

    def run() -> tuple[list[list[bytes]], bytes]:
        encoded.clear()
        arch = Archiver(repo, BackupOptions(paths=[str(src)], host="h"))
        _sid, snap = arch.run()
        return list(encoded), snap.tree

    folders = [d for d in src.rglob("*") if d.is_dir()]  # listed before the backups: it sets atimes
    for d in folders:  # an access time older than the mtime: relatime would set it on a listing
        os.utime(d, ns=(10**18, os.stat(d).st_mtime_ns))
    run()
    way = len(src.parts) - 1  # "/" and the folders on the way to src are always encoded
    atimes = {d: os.stat(d).st_atime_ns for d in folders}
    second, _tree2 = run()  # folders listed with O_NOATIME: their atimes, recorded, stay as they were
    assert {d: os.stat(d).st_atime_ns for d in atimes} == atimes
    assert len(second) == way
    third, tree3 = run()
    assert len(third) == way
    (src / "a1" / "b0" / "f").write_bytes(b"changed")
    fourth, tree4 = run()
    # b0, a1 and src itself, besides the folders on the way
    assert len(fourth) == way + 3 and [b"f"] in fourth and [b"b0", b"b1"] in fourth
    assert tree4 != tree3
    repo.close()


# --------------------------------------------------------------------------- listing and reading


def test_ls_and_snapshots_json(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "file").write_bytes(b"12345")
    os.chmod(src / "d" / "file", 0o640)
    os.symlink("file", src / "d" / "link")
    with open(os.path.join(os.fsencode(src), b"caf\xe9"), "wb") as f:
        f.write(b"latin-1 name")
    sid = summary(cli("backup", "--json", src, "--tag", "t"))["snapshot_id"]

    (snap,) = snapshots(cli)
    assert snap["id"] == sid and snap["short_id"] == str(sid)[:8]
    assert snap["paths"] == [str(src)] and snap["tags"] == ["t"]
    assert snap["summary"]["files_new"] == 2  # type: ignore[index]
    assert snap["parent"] is None and str(snap["program_version"]).startswith("backupfs ")

    lines = [json.loads(line) for line in cli("ls", "--json", "latest", src).stdout.splitlines()]
    assert lines[0]["struct_type"] == "snapshot" and lines[0]["id"] == sid
    nodes = {n["path"]: n for n in lines[1:]}
    f = nodes[f"{src}/d/file"]
    assert (f["type"], f["size"], f["permissions"], f["struct_type"]) == ("file", 5, "-rw-r-----", "node")
    assert f["mode"] == stat.S_IFREG | 0o640 and f["mtime"].startswith("20")
    assert nodes[f"{src}/d/link"]["type"] == "symlink" and nodes[f"{src}/d"]["type"] == "dir"
    assert any(p.startswith(f"{src}/caf") for p in nodes)  # a non-UTF-8 name does not break JSON

    long = cli("ls", "-l", "latest", src / "d").stdout.decode()
    assert "-rw-r-----" in long and "-> file" in long
    shallow = cli("ls", "--no-recursive", "latest", src).stdout.decode(errors="surrogateescape").splitlines()
    assert f"{src}/d" in shallow and f"{src}/d/file" not in shallow
    bad = cli("ls", "latest", src / "missing", check=False)
    assert bad.returncode == 2 and bad.stderr.count(b"\n") == 1
    assert cli("snapshots", "deadbeef", check=False).returncode == 2  # not an option: usage error
    assert cli("ls", "0123abcd", check=False).returncode == 2  # no such snapshot


def _chunks(data: Iterator[bytes] | bytes) -> str:
    h = hashlib.sha256()
    for c in [data] if isinstance(data, bytes) else data:
        h.update(c)
    return h.hexdigest()


def test_cat_sparse_file(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sparse = src / "sparse.img"
    with open(sparse, "wb") as f:
        f.seek(5 * MiB)
        f.write(b"middle" * 1000)
        f.seek(20 * MiB)
        f.write(b"end")
        f.truncate(24 * MiB + 7)  # a trailing hole
    cli("backup", src)
    out = cli("cat", "latest", sparse).stdout
    assert len(out) == 24 * MiB + 7
    assert _chunks(out) == _chunks(sparse.read_bytes())
    bad = cli("cat", "latest", src, check=False)
    assert bad.returncode == 2 and b"not a regular file" in bad.stderr


# --------------------------------------------------------------------------- keys


@pytest.mark.slow
def test_key_add_list_remove_passwd(cli: CLI, tmp_path: Path) -> None:
    pwfile = tmp_path / "pw2"
    pwfile.write_text("second password\n")
    cli("key", "add", "--new-password-file", pwfile)
    keys = json.loads(cli("key", "list", "--json").stdout)
    assert len(keys) == 2 and sum(k["current"] for k in keys) == 1
    second = next(k["id"] for k in keys if not k["current"])
    assert cli("snapshots", env={"BACKUPFS_PASSWORD": "second password"}).returncode == 0

    # a removed key's password stops working; the key in use cannot be removed
    current = next(k["id"] for k in keys if k["current"])
    for ref in (current, current[:8]):
        refused = cli("key", "remove", ref, check=False)
        assert refused.returncode == 2 and b"in use" in refused.stderr and refused.stderr.count(b"\n") == 1
    assert len(list((cli.repo / "keys").iterdir())) == 2
    cli("key", "remove", second[:8])
    assert cli("snapshots", check=False, env={"BACKUPFS_PASSWORD": "second password"}).returncode == 12
    assert cli("key", "remove", "ffffffff", check=False).returncode == 2

    # passwd: the new password works, the old one stops working, still one key
    cli("key", "passwd", env={"BACKUPFS_NEW_PASSWORD": "third password"})
    assert cli("snapshots", check=False).returncode == 12
    after = json.loads(cli("key", "list", "--json", env={"BACKUPFS_PASSWORD": "third password"}).stdout)
    assert len(after) == 1 and after[0]["id"] not in (current, second)
    assert {p.name for p in (cli.repo / "keys").iterdir()} == {after[0]["id"]}


def test_password_sources(cli: CLI, tmp_path: Path) -> None:
    pwfile = tmp_path / "pw"
    pwfile.write_text(PASSWORD + "\n")
    no_env = {"BACKUPFS_PASSWORD": ""}
    base = {k: v for k, v in cli.env.items() if k != "BACKUPFS_PASSWORD"}
    bare = CLI(cli.repo, base)
    assert bare("snapshots", "-p", pwfile).returncode == 0
    assert bare("snapshots", env={"BACKUPFS_PASSWORD_FILE": str(pwfile)}).returncode == 0
    assert bare("snapshots", "--password-command", f"cat {pwfile}").returncode == 0
    failing = bare("snapshots", "--password-command", "false", check=False)
    assert failing.returncode == 1 and failing.stderr.count(b"\n") == 1
    missing = bare("snapshots", "-p", tmp_path / "nope", check=False)
    assert missing.returncode == 1 and missing.stderr.count(b"\n") == 1
    empty = cli("snapshots", check=False, env=no_env)
    assert empty.returncode == 2 and empty.stderr.count(b"\n") == 1


# --------------------------------------------------------------------------- races with the filesystem


@pytest.fixture
def archiver(tmp_path: Path) -> Iterator[Archiver]:
    """A real archiver on a real local repository (cheap key derivation: no CLI needed here)."""
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), b"pw", kdf=(1, 8 * MiB))
    arch = Archiver(repo, BackupOptions(paths=[str(tmp_path)]))
    yield arch
    arch._pool.shutdown()
    repo.close()


def _describe(path: Path) -> tuple[bytes, fsmeta.Node]:
    node = fsmeta.node_from_path(os.fsencode(path.parent), os.fsencode(path.name))
    assert node is not None
    return os.fsencode(path), node


def _save_with_timeout(archiver: Archiver, path: bytes, node: fsmeta.Node) -> object:
    result: list[object] = []
    folder, name = os.path.split(path)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t = threading.Thread(target=lambda: result.append(archiver._save_file(dir_fd, name, path, node, None)), daemon=True)
        t.start()
        t.join(20)
        assert not t.is_alive(), "backup hung on the file"
    finally:
        os.close(dir_fd)
    return result[0]


def test_file_replaced_by_fifo_after_listing_is_skipped_not_hung(archiver: Archiver, tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"regular")
    path, node = _describe(f)
    f.unlink()
    os.mkfifo(f)  # no writer ever comes: opening it for reading would block forever
    assert _save_with_timeout(archiver, path, node) is None
    assert archiver.stats.skipped == [(str(f), "changed type during backup")]


def test_file_replaced_by_symlink_or_directory_is_skipped(archiver: Archiver, tmp_path: Path) -> None:
    f, d = tmp_path / "file", tmp_path / "dir"
    f.write_bytes(b"regular")
    d.write_bytes(b"regular")
    pf, nf = _describe(f)
    pd, nd = _describe(d)
    f.unlink()
    f.symlink_to("/etc/passwd")  # must never be followed
    d.unlink()
    d.mkdir()
    assert _save_with_timeout(archiver, pf, nf) is None
    assert _save_with_timeout(archiver, pd, nd) is None
    assert sorted(archiver.stats.skipped) == [
        (str(d), "changed type during backup"),
        (str(f), "changed type during backup"),
    ]


def test_vanished_file_is_skipped(archiver: Archiver, tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"here a moment ago")
    path, node = _describe(f)
    f.unlink()
    assert _save_with_timeout(archiver, path, node) is None
    assert archiver.stats.skipped == [(str(f), "No such file or directory")]


def test_vanishing_files_during_a_cli_backup(cli: CLI, tmp_path: Path) -> None:
    """Files deleted while the backup walks: the snapshot completes, and exit 3 names them if any
    were missed. Which ones vanish first is up to the scheduler; the outcome must be clean."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(400):
        (src / f"f{i:03d}").write_bytes(b"x" * 5000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupfs", "-r", str(cli.repo), "backup", src],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    for i in range(399, -1, -2):
        (src / f"f{i:03d}").unlink()
    _out, err = proc.communicate(timeout=120)
    text = err.decode()
    assert proc.returncode in (0, 3), text
    assert "Traceback" not in text and "internal error" not in text
    if proc.returncode == 3:
        assert "No such file or directory" in text
    assert len(snapshots(cli)) == 1
    cli("check", "--read-data")
