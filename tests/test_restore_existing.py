"""Restoring into a folder that already holds files: --overwrite, --delete, --dry-run, -v, and
--include at a cost in proportion to what it restores. Through the real CLI on real files,
except the cost test, which counts folder creations and listing loads in-process."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CLI, PASSWORD
from fastrepo import init_fast

from backupfs.backends.local import LocalBackend
from backupfs.ops.backup import Archiver, BackupOptions
from backupfs.ops.restore import Restorer
from backupfs.repository.repo import Repository

OLD, NEW = 1_600_000_000_000_000_000, 1_700_000_000_000_000_000  # mtimes, ns


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    init_fast(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


def write(path: Path, data: bytes, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))


def restore(cli: CLI, *args: str | os.PathLike[str], check: bool = True) -> tuple[dict[str, str], dict[str, object]]:
    """Runs `restore -v --json`: ({path: action}, summary)."""
    proc = cli("restore", *args, "-v", "--json", check=check)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    actions = {i["item"]: i["action"] for i in lines if i["message_type"] == "verbose_status"}
    return actions, lines[-1]


def state(root: Path) -> dict[str, tuple[str, bytes, int]]:
    """Every entry below `root`: kind, content or link target, mtime."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                out[str(p.relative_to(root))] = ("link", os.fsencode(os.readlink(p)), st.st_mtime_ns)
            elif p.is_dir():
                out[str(p.relative_to(root))] = ("dir", b"", st.st_mtime_ns)
            else:
                out[str(p.relative_to(root))] = ("file", p.read_bytes(), st.st_mtime_ns)
    return out


@pytest.fixture
def snapshot(cli: CLI, tmp_path: Path) -> str:
    """A snapshot of tmp_path/src/{same,edited,older,newer,gone-from-target,sub/inner}."""
    src = tmp_path / "src"
    for name in ("same", "edited", "older", "newer", "gone-from-target", "sub/inner"):
        write(src / name, f"snapshot's {name}\n".encode(), OLD)
    os.symlink("same", src / "link")
    cli("backup", src)
    return f"latest:{src}"


def fill(target: Path) -> None:
    """A target restored earlier, then changed: an edit that kept size and mtime, files older and
    newer than the snapshot's, a file and a folder the snapshot does not have."""
    for name in ("same", "edited", "older", "newer", "sub/inner"):
        write(target / name, f"snapshot's {name}\n".encode(), OLD)
    os.symlink("same", target / "link")
    write(target / "edited", b"snapshot's EDITED\n", OLD)  # same size, same mtime: only reading tells
    write(target / "older", b"older local\n", OLD - 10**9)
    write(target / "newer", b"newer local\n", NEW)
    write(target / "extra.txt", b"only in the target\n")
    write(target / "extra" / "deep" / "x", b"only in the target\n")


# --------------------------------------------------------------------------- --overwrite


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("always", {"same": "unchanged", "edited": "updated", "older": "updated", "newer": "updated"}),
        ("if-changed", {"same": "unchanged", "edited": "unchanged", "older": "updated", "newer": "updated"}),
        ("if-newer", {"same": "unchanged", "edited": "unchanged", "older": "updated", "newer": "unchanged"}),
        ("never", {"same": "unchanged", "edited": "unchanged", "older": "unchanged", "newer": "unchanged"}),
    ],
)
def test_overwrite_policies(cli: CLI, snapshot: str, tmp_path: Path, policy: str, expected: dict[str, str]) -> None:
    target = tmp_path / "t"
    fill(target)
    actions, result = restore(cli, snapshot, "--target", target, "--overwrite", policy)
    assert result["errors"] == 0
    assert {k.lstrip("/"): v for k, v in actions.items() if k.lstrip("/") in expected} == expected
    assert actions["/gone-from-target"] == "added" and actions["/link"] == "unchanged"
    for name, action in expected.items():
        content = (target / name).read_bytes()
        if action == "updated":
            assert content == f"snapshot's {name}\n".encode() and (target / name).stat().st_mtime_ns == OLD
        elif name == "edited":
            assert content == b"snapshot's EDITED\n"
    assert (target / "extra.txt").exists() and (target / "extra" / "deep" / "x").exists()  # no --delete
    assert not any(p.name.startswith(".backupfs-") for p in target.rglob("*"))  # no temporary file left


def test_restore_into_its_own_output_changes_nothing(cli: CLI, snapshot: str, tmp_path: Path) -> None:
    target = tmp_path / "t"
    cli("restore", snapshot, "--target", target)
    before = state(target)
    for policy in ("always", "if-changed"):
        actions, result = restore(cli, snapshot, "--target", target, "--overwrite", policy)
        assert set(actions.values()) == {"unchanged"} and result["errors"] == 0
        assert (result["files_restored"], result["bytes_restored"]) == (0, 0)
    assert state(target) == before


def test_entries_of_another_type_in_the_way(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "was-a-folder", b"a file now\n")
    write(src / "was-full-folder", b"a file now\n")
    write(src / "was-a-file" / "inner", b"inside\n")
    write(src / "fifo-spot", b"a file\n")
    cli("backup", src)
    target = tmp_path / "t"
    (target / "was-a-folder").mkdir(parents=True)
    write(target / "was-full-folder" / "precious", b"keep unless --delete\n")
    write(target / "was-a-file", b"a file where a folder belongs\n")
    os.mkfifo(target / "fifo-spot")
    proc = cli("restore", f"latest:{src}", "--target", target, check=False)
    assert proc.returncode == 1 and b"--delete replaces it" in proc.stderr, proc.stderr
    assert (target / "was-a-folder").read_bytes() == b"a file now\n"  # an empty folder is replaced
    assert (target / "was-full-folder" / "precious").exists()  # a full one is not, without --delete
    assert (target / "was-a-file" / "inner").read_bytes() == b"inside\n"
    assert (target / "fifo-spot").read_bytes() == b"a file\n"
    cli("restore", f"latest:{src}", "--target", target, "--delete")
    assert (target / "was-full-folder").read_bytes() == b"a file now\n"


# --------------------------------------------------------------------------- --delete


def test_delete_only_within_what_is_restored(cli: CLI, snapshot: str, tmp_path: Path) -> None:
    target = tmp_path / "t"
    fill(target)
    outside = tmp_path / "outside"
    write(outside / "victim", b"not to be touched\n")
    os.symlink(outside, target / "sub" / "escape")  # a symlink out of the target: removed, not followed
    write(target / "sub" / "stray", b"x")
    write(target / "keep.log", b"excluded: kept\n")
    # only /sub is restored: what lies beside it stays
    actions, _ = restore(cli, snapshot, "--target", target, "--include", "/sub", "--delete")
    assert {k for k, v in actions.items() if v == "deleted"} == {"/sub/escape", "/sub/stray"}
    assert (target / "extra.txt").exists() and (outside / "victim").read_bytes() == b"not to be touched\n"
    assert not (target / "sub" / "escape").is_symlink()
    # everything, but excluded names are not deleted
    actions, result = restore(cli, snapshot, "--target", target, "--delete", "--exclude", "*.log")
    assert {k for k, v in actions.items() if v == "deleted"} == {"/extra", "/extra.txt"}
    assert result["deleted"] == 2
    assert sorted(os.listdir(target)) == ["edited", "gone-from-target", "keep.log", "link", "newer", "older", "same", "sub"]
    assert os.listdir(outside) == ["victim"]


# --------------------------------------------------------------------------- --dry-run


def test_dry_run_writes_nothing_and_says_what_it_would_do(cli: CLI, snapshot: str, tmp_path: Path) -> None:
    target = tmp_path / "t"
    fill(target)
    before = state(target)
    actions, result = restore(cli, snapshot, "--target", target, "--dry-run", "--delete")
    assert state(target) == before
    assert result["dry_run"] is True
    assert {k: v for k, v in actions.items() if v != "unchanged"} == {
        "/edited": "updated", "/older": "updated", "/newer": "updated",
        "/gone-from-target": "added", "/extra": "deleted", "/extra.txt": "deleted",
    }  # fmt: skip
    # the same as a real run says
    real, _ = restore(cli, snapshot, "--target", target, "--delete")
    assert real == actions
    # into a folder that is not there: nothing is made
    fresh = tmp_path / "fresh"
    actions, result = restore(cli, snapshot, "--target", fresh, "--dry-run")
    assert not fresh.exists() and set(actions.values()) == {"added"} and result["files_restored"] == 6
    human = cli("restore", snapshot, "--target", fresh, "--dry-run").stdout.decode()
    assert "would restore 6 files" in human and not fresh.exists()


# --------------------------------------------------------------------------- --include's cost


def test_include_walks_and_makes_only_the_folders_on_the_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 11: an include of one folder made every folder of the snapshot and removed it
    again, loading every listing. Now: listings loaded and folders made in proportion."""
    src = tmp_path / "src"
    for i in range(60):
        write(src / "many" / f"d{i:02}" / "sub" / "f", b"elsewhere")
    write(src / "wanted" / "a", b"A")
    write(src / "wanted" / "b", b"B")
    write(src / "deep" / "x" / "leaf.txt", b"leaf")
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=(1, 8192))
    try:
        _sid, snap = Archiver(repo, BackupOptions(paths=[str(src)])).run()
    finally:
        repo.close()
    repo = Repository.open(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode())
    repo.load_index()
    made: list[bytes] = []
    loads: list[bytes] = []
    real_mkdir, real_load = os.mkdir, repo.load_tree

    def mkdir(path: str | bytes, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        if dir_fd is not None:  # in the target (not the target itself, made by path)
            made.append(os.fsencode(path))
        real_mkdir(path, mode, dir_fd=dir_fd)

    def load_tree(tree_id: bytes) -> object:
        loads.append(tree_id)
        return real_load(tree_id)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(repo, "load_tree", load_tree)
    way = len(src.parts) - 1  # the folders from / down to src (tmp, ..., src)

    def run(includes: list[str], target: str) -> None:
        made.clear()
        loads.clear()
        stats = Restorer(repo, snap.tree, str(tmp_path / target), includes=includes).run()
        assert not stats.errors

    try:
        run([f"{src}/wanted"], "t1")
        assert len(made) == way + 1  # those, and wanted: no stray folder made
        assert len(loads) == 1 + way + 1  # the listings of /, of those, and of wanted
        assert sorted(os.listdir(tmp_path / "t1" / str(src).lstrip("/"))) == ["wanted"]
        # a pattern that may match anywhere walks every listing, but makes only the way to a match
        run(["leaf.txt"], "t2")
        assert len(made) == way + 2  # ..., src, deep, x
        assert len(loads) > 120
    finally:
        repo.close()


def test_a_second_include_restore_costs_nothing_more(cli: CLI, snapshot: str, tmp_path: Path) -> None:
    target = tmp_path / "t"
    cli("restore", snapshot, "--target", target, "--include", "/sub/inner")
    assert sorted(os.listdir(target)) == ["sub"]
    actions, _ = restore(cli, snapshot, "--target", target, "--include", "/sub/inner")
    assert actions == {"/sub": "unchanged", "/sub/inner": "unchanged"}


# --------------------------------------------------------------------------- bad input


def test_bad_restore_options(cli: CLI, snapshot: str, tmp_path: Path) -> None:
    bad: list[tuple[list[str | os.PathLike[str]], Callable[[subprocess.CompletedProcess[bytes]], bool]]] = [
        (["--overwrite", "sometimes"], lambda p: b"invalid choice" in p.stderr),
        (["--target", tmp_path / "file"], lambda p: b"not a folder" in p.stderr and p.stderr.count(b"\n") == 1),
    ]
    write(tmp_path / "file", b"a file, not a folder")
    for args, ok in bad:
        full = ["--target", tmp_path / "t", *args] if "--target" not in args else args
        proc = cli("restore", snapshot, *full, check=False)
        assert proc.returncode == 2 and b"Traceback" not in proc.stderr and ok(proc), proc.stderr
