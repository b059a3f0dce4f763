"""A forged tree 10,000 levels deep (issue 10): tree blobs written directly with the real key, each
listing one sub-folder, the last one file. No real folder is made to build it (that is
tests/test_deep_folders.py, at 2,000 levels); it is what someone holding the key could store.

Every reader walks it to the bottom and ends in success (exit 0): ls, restore, stats, find, diff,
prune (dry run and real), repair index and snapshots, check --read-data and a real FUSE mount,
each in bounded memory (peak RSS under RSS_LIMIT_KIB, measured as tests/test_bombs.py does), and
restore writes nothing outside its target. Output is quadratic in the depth (ls prints 10,000
paths of up to 20,000 bytes), so big outputs go to a file and are read a line at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deeptree import DIR_FLAGS, remove_tree
from hostile import Forge, assert_clean
from mounting import CAN_MOUNT, SKIP_REASON, Cli, Mount
from test_bombs import MEASURED
from test_mount import mount  # noqa: F401 - the fixture, shared with the other mount tests

pytestmark = pytest.mark.slow

DEPTH = 10_000
NAME = b"d"
BOTTOM = b"the bottom\n"
# Each reader needs ~40 MB here. Tighter than tests/test_bombs.py's 300 MB: a walk that keeps a
# path per level (O(depth^2): 100 MB of paths at this depth, as repair snapshots once did) fails it.
RSS_LIMIT_KIB = 100 * 1024
DEEPEST_DIR = "/" + "/".join([NAME.decode()] * DEPTH)
DEEPEST = DEEPEST_DIR + "/bottom"


@dataclass
class Deep:
    cli: Cli
    base: Path
    sid: str  # the deep snapshot
    empty_sid: str  # a snapshot of nothing, older: what diff compares with


def _folder(name: bytes, subtree: bytes) -> dict[str, object]:
    t = 10**18
    return {"n": name, "t": "d", "m": 0o755, "u": 0, "g": 0, "mt": t, "at": t, "ct": t, "s": 0, "st": subtree}


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> Deep:
    base = tmp_path_factory.mktemp("deep-forged")
    cli = Cli(base)
    f = Forge(cli.repo)
    try:
        empty_sid = f.snapshot([])
        tree = f.tree([f.file(b"bottom", BOTTOM)])
        for _level in range(DEPTH - 1):
            tree = f.tree([_folder(NAME, tree)])
        sid = f.snapshot([_folder(NAME, tree)])
    finally:
        f.close()
    return Deep(cli, base, sid, empty_sid)


def measured(deep: Deep, *args: str, stdout: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Runs the CLI, asserts it ended cleanly (exit 0, no traceback) in bounded memory; stdout goes
    to `stdout` if given (the returned stdout is then empty)."""
    rss_file = deep.base / "rss"
    with open(stdout or os.devnull, "wb") as out:
        proc = subprocess.run(
            [sys.executable, "-c", MEASURED, str(rss_file), "-r", str(deep.cli.repo), *args],
            env=deep.cli.env,
            stdout=out if stdout else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=600,
            check=False,
        )
    assert_clean(proc.stderr)
    assert proc.returncode == 0, (args, proc.stderr.decode())
    rss = int(rss_file.read_text())
    assert rss < RSS_LIMIT_KIB, (args, rss)
    return proc


def lines_of(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


def paths_down(depth: int) -> Iterator[str]:
    """The paths ls prints, top down: /d, /d/d, ... and the file at the bottom."""
    for level in range(1, depth + 1):
        yield "/" + "/".join([NAME.decode()] * level)
    yield DEEPEST


def test_ls_lists_every_level(deep: Deep) -> None:
    out = deep.base / "ls.txt"
    measured(deep, "ls", deep.sid, stdout=out)
    assert all(got == want for got, want in zip(lines_of(out), paths_down(DEPTH), strict=True))
    # and one folder at the bottom, named by its 20,000-byte path
    proc = measured(deep, "ls", "--no-recursive", deep.sid, DEEPEST_DIR)
    assert proc.stdout.decode().splitlines() == [DEEPEST]


def test_restore_writes_every_level_and_nothing_outside(deep: Deep) -> None:
    around = deep.base / "around"
    target = around / "target"
    around.mkdir()
    try:
        measured(deep, "restore", deep.sid, "--target", str(target))
        assert os.listdir(around) == ["target"]
        fd = os.open(target, DIR_FLAGS)
        try:
            for level in range(DEPTH):
                assert os.listdir(fd) == [NAME.decode()], level
                sub = os.open(NAME, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = sub
            assert os.listdir(fd) == ["bottom"]
            with open(os.open("bottom", os.O_RDONLY, dir_fd=fd), "rb") as f:
                assert f.read() == BOTTOM
        finally:
            os.close(fd)
    finally:
        remove_tree(around)  # shutil.rmtree would recurse past Python's limit


def test_stats_find_and_diff_reach_the_bottom(deep: Deep) -> None:
    stats = json.loads(measured(deep, "stats", "--json", deep.sid).stdout)
    assert (stats["restore_file_count"], stats["restore_size"]) == (DEPTH + 1, len(BOTTOM))
    (found,) = json.loads(measured(deep, "find", "--json", "--snapshot", deep.sid, "bottom").stdout)
    assert [m["path"] for m in found["matches"]] == [DEEPEST]
    out = deep.base / "diff.txt"
    measured(deep, "diff", deep.empty_sid, deep.sid, stdout=out)
    changes = [line for line in lines_of(out) if line.startswith("+")]
    assert len(changes) == DEPTH + 1
    assert (changes[0].split()[-1], changes[-1].split()[-1]) == ("/d/", DEEPEST)  # diff marks folders with /


def test_prune_and_repair_keep_it_whole_then_check_passes(deep: Deep) -> None:
    """Nothing is unused, so prune deletes nothing (its dry run says so first); repair finds
    nothing to repair; then check --read-data walks it all and passes."""
    plan = json.loads(measured(deep, "prune", "--dry-run", "--json").stdout.splitlines()[-1])
    assert (plan["delete_packs"], plan["repack_packs"], plan["unused_blobs"]) == (0, 0, 0)
    done = json.loads(measured(deep, "prune", "--json").stdout.splitlines()[-1])
    assert (done["delete_packs"], done["repack_packs"], done["freed_bytes"]) == (0, 0, 0)
    measured(deep, "repair", "index")
    repaired = json.loads(measured(deep, "repair", "snapshots", "--json").stdout)["snapshots"]
    assert [(r["changed"], r["unrepairable"]) for r in repaired] == [(False, None)] * 2
    measured(deep, "check", "--read-data")


@pytest.mark.fuse
@pytest.mark.skipif(not CAN_MOUNT, reason=SKIP_REASON)
def test_the_mount_reaches_the_bottom(deep: Deep, mount: Callable[..., Mount]) -> None:  # noqa: F811
    m = mount(deep.cli)
    top = m.path / "ids" / deep.sid[:8]
    assert os.listdir(top) == ["d"]
    fd = os.open(top, DIR_FLAGS)
    try:
        for level in range(DEPTH):  # one lookup per level, as `cd d` would do
            if level < 3:
                assert os.listdir(fd) == ["d"]
            sub = os.open(NAME, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = sub
        assert os.listdir(fd) == ["bottom"]
        with open(os.open("bottom", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == BOTTOM
    finally:
        os.close(fd)
    with open(f"/proc/{m.proc.pid}/status") as status:
        peak = int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
    assert peak < RSS_LIMIT_KIB, peak
    assert_clean(m.stderr())
