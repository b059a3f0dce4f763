"""The one tree walk (`ops/walk.py`) and the bounded folder fds (`ops/dirfds.py`), as units.

Trees here are dicts of listings (a loader is all the walk needs), which is the only way to
hold a cycle: a repository refuses the forged listing a cycle needs (tests/adversarial/
test_deep_trees.py). Folder fds are real folders.
"""

from __future__ import annotations

import errno
import os
import threading
import tracemalloc
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from backupfs.errors import BackupfsError, IntegrityError
from backupfs.format.tree import DIR, FILE, Node
from backupfs.ops.dirfds import DirChain, open_beneath, open_dir
from backupfs.ops.walk import Kind, Step, TreeCycle, walk


def d(name: bytes, tid: bytes) -> Node:
    return Node(name=name, type=DIR, subtree=tid)


def f(name: bytes) -> Node:
    return Node(name=name, type=FILE)


class Trees(dict[bytes, list[Node]]):
    """Listings by id; counts the loads, and which threads did them."""

    def __init__(self, listings: dict[bytes, list[Node]]) -> None:
        super().__init__(listings)
        self.loads: list[bytes] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def load(self, tid: bytes) -> list[Node]:
        with self._lock:
            self.loads.append(tid)
            self.threads.add(threading.current_thread().name)
        if tid not in self:
            raise IntegrityError(f"tree {tid!r} is missing")
        return self[tid]


SAMPLE = Trees(
    {
        b"R": [f(b"a"), d(b"b", b"B"), d(b"c", b"C"), f(b"z")],
        b"B": [f(b"x"), d(b"y", b"Y")],
        b"Y": [f(b"deep")],
        b"C": [d(b"same", b"Y")],
    }
)


def trace(steps: Iterable[Step[list[Node]]]) -> list[str]:
    """Each step as text, its path read while it is the walk's current step."""
    return [f"{s.kind.value} {s.path.decode() or '/'} {s.depth}" for s in steps]


def test_pre_order_with_listings_and_post_order() -> None:
    steps: list[Step[list[Node]]] = []
    assert trace(_keep(walk(SAMPLE.load, b"R", listings=True, post_order=True), steps)) == [
        "listing / 0",
        "entry /a 1",
        "entry /b 1",
        "listing /b 1",
        "entry /b/x 2",
        "entry /b/y 2",
        "listing /b/y 2",
        "entry /b/y/deep 3",
        "leave /b/y 2",
        "leave /b 1",
        "entry /c 1",
        "listing /c 1",
        "entry /c/same 2",
        "listing /c/same 2",
        "entry /c/same/deep 3",
        "leave /c/same 2",
        "leave /c 1",
        "entry /z 1",
    ]
    assert steps[0].node is None and steps[0].listing == SAMPLE[b"R"]
    assert steps[1].path == b"/a"  # read while current (by trace), kept
    unread = list(walk(SAMPLE.load, b"R", listings=True, post_order=True))
    leave_b = unread[9]
    assert leave_b.kind is Kind.LEAVE and leave_b.node is not None and leave_b.node.name == b"b"
    with pytest.raises(RuntimeError, match="moved on"):
        leave_b.path  # noqa: B018 - read after the walk moved on: refused, not a wrong path
    assert unread[-1].path == b"/z"  # nothing moved after the last step


def _keep(steps: Iterable[Step[list[Node]]], into: list[Step[list[Node]]]) -> Iterator[Step[list[Node]]]:
    for step in steps:
        into.append(step)
        yield step


def test_only_entries_by_default_and_a_prefix() -> None:
    paths = [s.path for s in walk(SAMPLE.load, b"B", prefix=b"/in/b")]
    assert paths == [b"/in/b/x", b"/in/b/y", b"/in/b/y/deep"]


def test_a_cleared_enter_prunes_the_folder_and_its_load() -> None:
    trees = Trees(SAMPLE)
    out = []
    for step in walk(trees.load, b"R", post_order=True):
        out.append(f"{step.kind.value} {step.path.decode()}")
        if step.path == b"/b":
            step.enter = False
    assert out == [
        "entry /a",
        "entry /b",
        "entry /c",
        "entry /c/same",
        "entry /c/same/deep",
        "leave /c/same",
        "leave /c",
        "entry /z",
    ]
    assert b"B" not in trees.loads


def test_seen_walks_each_tree_once_across_walks() -> None:
    trees = Trees(SAMPLE)
    seen: set[bytes] = set()
    first = [s.path for s in walk(trees.load, b"R", seen=seen)]
    assert b"/c/same/deep" not in first  # Y was walked under /b/y already
    assert b"/c/same" in first
    assert sorted(trees.loads) == [b"B", b"C", b"R", b"Y"]
    assert list(walk(trees.load, b"R", seen=seen)) == []
    assert [s.path for s in walk(trees.load, b"C", seen=set())] == [b"/same", b"/same/deep"]


def test_a_shared_subtree_is_not_a_cycle() -> None:
    paths = [s.path for s in walk(SAMPLE.load, b"R")]
    assert b"/b/y/deep" in paths and b"/c/same/deep" in paths


@pytest.mark.parametrize("seen", [None, set()], ids=["plain", "seen"])
def test_a_cycle_is_refused_with_its_path(seen: set[bytes] | None) -> None:
    trees = Trees(
        {
            b"R": [d(b"loop", b"R"), d(b"sub", b"S"), f(b"after")],
            b"S": [d(b"back", b"R"), d(b"self", b"S"), f(b"file")],
        }
    )
    errors: list[tuple[str, str]] = []

    def on_error(folder: Step[list[Node]], exc: BackupfsError) -> None:
        assert isinstance(exc, TreeCycle) and exc.exit_code == 4
        errors.append((folder.path.decode(), str(exc)))

    steps = [
        f"{s.kind.value} {s.path.decode()}"
        for s in walk(trees.load, b"R", seen=seen, on_error=on_error, post_order=True)
    ]
    assert [e[0] for e in errors] == ["/loop", "/sub/back", "/sub/self"]
    assert "its listing 52 is that of a folder it lies in (a cycle" in errors[0][1]
    assert steps == [
        "entry /loop",
        "leave /loop",
        "entry /sub",
        "entry /sub/back",
        "leave /sub/back",
        "entry /sub/self",
        "leave /sub/self",
        "entry /sub/file",
        "leave /sub",
        "entry /after",
    ]
    with pytest.raises(TreeCycle):
        list(walk(trees.load, b"R"))


def test_unreadable_listings_go_to_on_error_or_raise() -> None:
    trees = Trees({b"R": [d(b"gone", b"G"), f(b"after")]})
    errors: list[tuple[bytes, bytes | None]] = []

    def on_error(folder: Step[list[Node]], exc: BackupfsError) -> None:
        errors.append((folder.path, folder.node.name if folder.node else None))

    assert [s.path for s in walk(trees.load, b"R", on_error=on_error)] == [b"/gone", b"/after"]
    assert list(walk(trees.load, b"nothing", on_error=on_error)) == []
    assert errors == [(b"/gone", b"gone"), (b"", None)]
    with pytest.raises(IntegrityError, match="missing"):
        list(walk(trees.load, b"R"))


def chain(depth: int, name: bytes) -> Trees:
    """A folder `depth` levels deep: level i holds a file and folder i+1."""
    listings = {}
    for i in range(depth):
        tid = b"%d" % i
        listings[tid] = [d(name, b"%d" % (i + 1)), f(b"file")] if i + 1 < depth else [f(b"bottom")]
    return Trees(listings)


def test_depth_costs_neither_recursion_nor_the_square_of_the_path() -> None:
    """5,000 levels of 200-byte names: the deepest path is 1 MB. A walk that kept each level's
    path (or recursed) would hold 2.5 GB of prefixes (or overflow the stack)."""
    depth, name = 5_000, b"n" * 200
    trees = chain(depth, name)
    tracemalloc.start()
    try:
        count = 0
        longest = 0
        for step in walk(trees.load, b"0", post_order=True, listings=True):
            count += 1
            if step.node is not None and step.node.name == b"bottom":
                longest = len(step.path)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 4 * depth - 2  # each level: its listing, entry and leave, and a file (the root: no entry or leave)
    assert longest == (depth - 1) * 201 + len(b"/bottom")
    assert peak < 20 << 20, peak


def test_readahead_loads_on_the_pool_and_changes_nothing() -> None:
    listings: dict[bytes, list[Node]] = {b"R": [d(b"%03d" % i, b"T%d" % i) for i in range(40)]}
    for i in range(40):
        listings[b"T%d" % i] = [f(b"x"), d(b"sub", b"U%d" % i)]
        listings[b"U%d" % i] = [f(b"y")]
    plain = [(s.kind, s.path) for s in walk(Trees(listings).load, b"R", listings=True, post_order=True)]
    trees = Trees(listings)
    with ThreadPoolExecutor(4, thread_name_prefix="ahead") as pool:
        ahead = [
            (s.kind, s.path) for s in walk(trees.load, b"R", listings=True, post_order=True, readahead=4, pool=pool)
        ]
    assert ahead == plain
    assert sorted(trees.loads) == sorted(listings)  # each loaded once
    assert any(t.startswith("ahead") for t in trees.threads)


def test_readahead_of_pruned_folders_is_dropped() -> None:
    listings: dict[bytes, list[Node]] = {b"R": [d(b"%02d" % i, b"T%d" % i) for i in range(10)]}
    listings.update({b"T%d" % i: [f(b"x")] for i in range(10)})
    trees = Trees(listings)
    with ThreadPoolExecutor(2) as pool:
        steps = walk(trees.load, b"R", readahead=3, pool=pool)
        for step in steps:
            step.enter = False
    assert len(trees.loads) <= 1 + 3  # the root and at most one read-ahead window
    with pytest.raises(ValueError):
        list(walk(trees.load, b"R", readahead=2))


# --------------------------------------------------------------------------- dirfds


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_chain(base: Path, depth: int) -> None:
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(b"d", dir_fd=fd)
        nfd = open_dir(fd, b"d")
        os.close(fd)
        fd = nfd
    os.close(fd)


def test_dir_chain_keeps_few_fds_and_comes_back_to_the_same_folders(tmp_path: Path) -> None:
    depth = 300
    make_chain(tmp_path, depth)
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    before = open_fds()
    chain = DirChain(root, max_open=8)
    inodes = [os.fstat(root).st_ino]
    for _ in range(depth):
        chain.push(b"d", open_dir(chain.fd, b"d"))
        inodes.append(os.fstat(chain.fd).st_ino)
        assert open_fds() <= before + 8
    assert chain.depth == depth and len(set(inodes)) == depth + 1
    for level in range(depth, 0, -1):
        assert os.fstat(chain.fd).st_ino == inodes[level]
        chain.pop()
        assert open_fds() <= before + 8
    assert chain.fd == root and chain.depth == 0
    with pytest.raises(ValueError):
        chain.pop()
    chain.close()
    assert open_fds() == before
    os.close(root)


def test_dir_chain_refuses_a_folder_replaced_behind_it(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c" / "d").mkdir(parents=True)
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    chain = DirChain(root, max_open=2)
    for name in (b"a", b"b", b"c", b"d"):
        chain.push(name, open_dir(chain.fd, name))  # a and b are closed again
    (tmp_path / "a" / "b" / "c").rename(tmp_path / "c2")  # ".." of c is no longer b
    (tmp_path / "a" / "b").rename(tmp_path / "b_old")
    (tmp_path / "a" / "b").mkdir()  # and a/b is another folder
    chain.pop()  # to c: still open
    with pytest.raises(OSError) as caught:
        chain.pop()  # to b: neither way leads to the b it was
    assert caught.value.errno == errno.ESTALE
    assert chain.fd == -1 and chain.depth == 2
    chain.pop()  # on to a, by name from the root: the same a as before
    assert os.fstat(chain.fd).st_ino == (tmp_path / "a").stat().st_ino
    chain.close()
    os.close(root)


def test_open_beneath_walks_names_and_follows_no_symlink(tmp_path: Path) -> None:
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "x")
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fd = open_beneath(root, [b"x", b"y"])
    assert os.fstat(fd).st_ino == (tmp_path / "x" / "y").stat().st_ino
    os.close(fd)
    with pytest.raises(OSError) as caught:
        open_beneath(root, [b"link", b"y"])
    assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)
    same = open_beneath(root, [])
    assert same != root and os.fstat(same).st_ino == os.fstat(root).st_ino
    os.close(same)
    os.close(root)
