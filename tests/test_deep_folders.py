"""A real folder 2,000 levels deep (issue 10): its deepest paths are 6,000 bytes long, past
PATH_MAX, so nothing can reach them by path. Backup, ls, restore, check, diff, dump, find, stats,
repair and a real FUSE mount must all handle it completely (Python's recursion limit is 1,000
frames: a reader that recursed per level would fail); the commands run with a soft limit of 512
open files (one fd per level would need 2,000).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deeptree import DIR_FLAGS, NAME, describe, make_deep, remove_tree
from mounting import CAN_MOUNT, SKIP_REASON, Cli, Mount
from test_mount import mount  # noqa: F401 - the fixture, shared with the other mount tests

pytestmark = pytest.mark.slow

DEPTH = 2_000
FD_LIMIT = 512
CD_LEVELS = 500  # 1,500 bytes of path per `cd`
DEEPEST = b"/" + b"/".join([NAME] * DEPTH) + b"/deepest"  # the bottom file, below the source


def low_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))


def run(cli: Cli, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    """The CLI with a low fd limit."""
    return subprocess.run(
        [sys.executable, "-m", "backupfs", "-r", str(cli.repo), *map(str, args)],
        capture_output=True,
        env=cli.env,
        timeout=300,
        check=False,
        preexec_fn=low_fd_limit,
    )


class Deep:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.src = base / "src"
        self.cli = Cli(base)
        self.backup: subprocess.CompletedProcess[bytes] | None = None
        self.sid = ""  # the deep snapshot (latest)
        self.empty_sid = ""  # the same folder, empty, backed up before (what diff compares with)


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deep]:
    d = Deep(tmp_path_factory.mktemp("deep"))
    d.src.mkdir()
    run(d.cli, "backup", d.src)
    make_deep(d.src, DEPTH)
    d.backup = run(d.cli, "backup", d.src)
    snaps = json.loads(d.cli("snapshots", "--json").stdout)
    d.empty_sid, d.sid = (s["id"] for s in sorted(snaps, key=lambda s: s["time"]))
    yield d
    remove_tree(d.src)  # shutil.rmtree would recurse past Python's limit


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A folder that may get deep; removed without recursion."""
    yield tmp_path / "scratch"
    remove_tree(tmp_path / "scratch")


def test_backup_saves_every_level(deep: Deep) -> None:
    assert deep.backup is not None
    assert deep.backup.returncode == 0, deep.backup.stderr.decode()
    assert deep.backup.stderr == b""  # nothing skipped (it was 'File name too long' past PATH_MAX)


def test_ls_lists_every_level(deep: Deep) -> None:
    proc = run(deep.cli, "ls", "latest", deep.src)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
    lines = proc.stdout.splitlines()
    expected = [os.fsencode(deep.src) + p for p, _what in describe(deep.src)]
    assert lines == expected
    assert os.fsencode(deep.src) + DEEPEST in lines
    assert max(map(len, lines)) > 3 * 2_000


def test_restore_is_identical(deep: Deep, scratch: Path) -> None:
    proc = run(deep.cli, "restore", "latest", "--target", scratch)
    assert proc.returncode == 0, proc.stderr.decode()
    restored = scratch / str(deep.src).lstrip("/")
    assert list(describe(restored)) == list(describe(deep.src))  # contents, modes, links, xattrs
    # the hardlink at the bottom is one inode again
    fd = os.open(restored, DIR_FLAGS)
    try:
        for _ in range(DEPTH):
            sub = os.open(NAME, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = sub
        a = os.stat("deepest", dir_fd=fd)
        b = os.stat("deepest-too", dir_fd=fd)
    finally:
        os.close(fd)
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)


def test_restore_again_and_delete_at_any_depth(deep: Deep, scratch: Path) -> None:
    """A second restore finds all 2,000 levels as they are; --delete removes a stray folder
    as deep, through folder fds (no path, no recursion), and nothing else."""
    assert run(deep.cli, "restore", "latest", "--target", scratch).returncode == 0
    restored = scratch / str(deep.src).lstrip("/")
    make_deep(restored / "stray", DEPTH)
    proc = run(deep.cli, "restore", "latest", "--target", scratch, "--delete", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert (summary["added"], summary["updated"], summary["deleted"]) == (0, 0, 1)
    assert summary["unchanged"] > DEPTH
    assert list(describe(restored)) == list(describe(deep.src))


def test_check_passes(deep: Deep) -> None:
    proc = run(deep.cli, "check", "--read-data")
    assert proc.returncode == 0, proc.stderr.decode()


def test_diff_names_every_level(deep: Deep) -> None:
    proc = run(deep.cli, "diff", "--json", deep.empty_sid, deep.sid)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
    *changes, stats = map(json.loads, proc.stdout.splitlines())
    added = [("+", str(deep.src) + p.decode()) for p, _what in describe(deep.src)]
    assert [(c["modifier"], c["path"]) for c in changes] == added
    assert stats["added"]["dirs"] == DEPTH


def test_dump_archives_every_level(deep: Deep) -> None:
    target = deep.base / "deep.tar"
    proc = run(deep.cli, "dump", deep.sid, deep.src, "--target", target)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
    top = str(deep.src).lstrip("/")
    with tarfile.open(target) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [top] + [top + p.decode() for p, _ in describe(deep.src)]
        by_name = {m.name: m for m in members}
        deepest, again = by_name[top + DEEPEST.decode()], by_name[top + DEEPEST.decode() + "-too"]
        assert deepest.pax_headers["SCHILY.xattr.user.deep"] == "yes"
        f = tar.extractfile(deepest)
        assert f is not None and f.read() == b"the bottom\n"
        assert again.islnk() and again.linkname == deepest.name
    target.unlink()


def test_find_reaches_the_bottom(deep: Deep) -> None:
    proc = run(deep.cli, "find", "--json", "--snapshot", deep.sid, "deepest*")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
    (found,) = json.loads(proc.stdout)
    bottom = str(deep.src) + DEEPEST.decode()
    assert [m["path"] for m in found["matches"]] == [bottom, bottom + "-too"]


def test_stats_count_every_level(deep: Deep) -> None:
    proc = run(deep.cli, "stats", "--json", deep.sid)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
    stats = json.loads(proc.stdout)
    entries = list(describe(deep.src))
    sizes = [what.rsplit(" ", 3)[1:] for _p, what in entries if what.startswith("-")]  # [size, hash, links=N]
    unlinked = sum(int(size) for size, _hash, links in sizes if links == "links=1")
    # every entry below the root (the folders above the source too), the hard-linked file once
    assert stats["restore_file_count"] == len(entries) + len(deep.src.parts) - 1
    assert stats["restore_size"] == unlinked + len(b"the bottom\n")


def test_repair_snapshots_walks_every_level(deep: Deep) -> None:
    proc = run(deep.cli, "repair", "snapshots", "--dry-run", "--json")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
    results = json.loads(proc.stdout)["snapshots"]
    assert [(r["changed"], r["unrepairable"]) for r in results] == [(False, None)] * 2


@pytest.mark.fuse
@pytest.mark.skipif(not CAN_MOUNT, reason=SKIP_REASON)
def test_the_mount_reaches_the_bottom(deep: Deep, mount: Callable[..., Mount]) -> None:  # noqa: F811
    m = mount(deep.cli)
    top = m.path / "ids" / deep.sid[:8] / str(deep.src).lstrip("/")
    # a user's `find` lists the whole tree (it walks by fds, as every tool must past PATH_MAX)
    found = subprocess.run(["find", "."], cwd=top, capture_output=True, timeout=300, check=True)
    assert found.stdout.splitlines() == [b"."] + [b"." + p for p, _what in describe(deep.src)]
    # and a shell can `cd` down and read the bottom file: in steps of CD_LEVELS levels, each
    # path shorter than PATH_MAX (bash's `cd ab` level by level costs it O(depth) stats per level:
    # minutes, on the real folder too; dash cannot at all, its logical path outgrows PATH_MAX)
    step = "/".join([NAME.decode()] * CD_LEVELS)
    script = f"for i in $(seq {DEPTH // CD_LEVELS}); do cd {step} || exit 1; done; cat deepest"
    shell = subprocess.run(["bash", "-c", script], cwd=top, capture_output=True, timeout=300, check=False)
    assert (shell.returncode, shell.stdout) == (0, b"the bottom\n"), shell.stderr
    # what it shows is what was backed up, metadata and xattrs included
    assert list(describe(top)) == list(describe(deep.src))
    assert "Traceback" not in m.stderr()
