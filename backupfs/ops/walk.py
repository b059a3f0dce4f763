"""The one walk over stored trees: ls, restore, check, copy, prune, dump and find go through `walk`.

Iterative, so a tree of any depth costs no Python recursion: an explicit stack holds one frame
per folder being walked. A frame keeps the folder's listing, a cursor into it, where its path
ends in one shared path buffer, and at most `readahead` listings of its sub-folders loaded ahead.
Paths are never copied per level, so memory grows with the listings on the current path, not with
the square of the depth (a 10,000-level chain of one-letter names would otherwise hold 100 MB of
prefixes).

Order: depth first, each entry before a folder's contents (pre-order). On request, a LISTING
step when a folder's listing is loaded (before its entries) and a LEAVE step after its contents
(post-order: restore sets a folder's metadata once everything in it is written; copy saves a
folder's new listing once its sub-folders have theirs). A caller prunes a sub-folder by clearing
`Step.enter` on its ENTRY step before asking for the next step.

A folder whose listing is one of the folders it lies in is never entered (`TreeCycle`): tree ids
are keyed hashes of the listing and the repository refuses a listing that does not hash to its
id (architecture.md 1), so no repository can hold a cycle; the walk refuses one anyway, cheaply.
With `seen`, a listing already walked (in this walk or an earlier one) is not walked again:
check and prune visit each tree once, however many folders and snapshots share it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from typing import Any, Generic, Protocol, TypeVar

from backupfs.errors import BackupfsError, IntegrityError
from backupfs.format.tree import DIR, Node

L = TypeVar("L", bound=Sequence[Node])  # what the loader gives: a Listing, or the nodes as stored


class Kind(enum.Enum):
    ENTRY = "entry"  # one entry of a listing, in the listing's order
    LISTING = "listing"  # a folder's listing was loaded; its entries come next
    LEAVE = "leave"  # after the contents of a folder that was entered


class _PathBuffer:
    """The walk's one path buffer. `moves` counts the changes: a step's path is read from the
    buffer, so only while nothing has changed it since the step was made."""

    __slots__ = ("buf", "moves")

    def __init__(self, prefix: bytes) -> None:
        self.buf = bytearray(prefix)
        self.moves = 0


class Step(Generic[L]):
    """One step of a walk. `path` is the entry's (or the folder's) path below the walk's prefix,
    `b"/"`-separated; the root folder's is the prefix itself (often empty) and its node None.
    `depth` counts folders: the root listing's entries are at 1.

    `path` is made when first read (what it costs grows with the depth, and check, prune and
    copy read it only for a message), so read it before asking for the next step; reading it
    later is an error, not a wrong path."""

    __slots__ = ("_at", "_buffer", "_made", "_path", "depth", "enter", "kind", "listing", "node")

    def __init__(
        self,
        kind: Kind,
        buffer: _PathBuffer,
        path_len: int,
        node: Node | None,
        depth: int,
        listing: L | None = None,
        enter: bool = False,
    ) -> None:
        self.kind = kind
        self.node = node
        self.depth = depth
        self.listing = listing  # LISTING only
        self.enter = enter  # ENTRY of a folder with a listing: the walk goes in unless cleared
        self._buffer = buffer
        self._at = path_len
        self._made = buffer.moves
        self._path: bytes | None = None

    @property
    def path(self) -> bytes:
        if self._path is None:
            if self._buffer.moves != self._made:
                raise RuntimeError("a walk step's path was read after the walk moved on")
            self._path = bytes(self._buffer.buf[: self._at])
        return self._path

    def __repr__(self) -> str:
        return f"Step({self.kind.value}, depth={self.depth}, node={self.node.name if self.node else None!r})"


class TreeCycle(IntegrityError):
    """A folder's listing is that of a folder it lies in."""


class Seen(Protocol):
    """The trees a walk need not enter again (a set, or prune's marks in its blob table)."""

    def __contains__(self, tree_id: object, /) -> bool: ...

    def add(self, tree_id: bytes, /) -> None: ...


# Told of each listing that cannot be loaded (or would close a cycle), with the step of its
# folder (the root's: a LISTING step without node); it may raise to end the walk. Without one,
# the error is raised.
ErrorSink = Callable[[Step[Any], BackupfsError], None]


@dataclasses.dataclass(slots=True, eq=False)
class _Frame(Generic[L]):
    tree_id: bytes
    nodes: L
    path_len: int  # this folder's path is the buffer's first path_len bytes (not kept: O(depth))
    node: Node | None  # its entry; None for the root
    depth: int
    at: int = 0  # the next entry to yield
    ahead: int = 0  # the next entry to consider for read-ahead
    loading: list[bytes] = dataclasses.field(default_factory=list)  # its sub-listings being loaded


def walk(
    load: Callable[[bytes], L],
    root: bytes,
    *,
    prefix: bytes = b"",
    listings: bool = False,
    post_order: bool = False,
    seen: Seen | None = None,
    on_error: ErrorSink | None = None,
    readahead: int = 0,
    pool: Executor | None = None,
) -> Iterator[Step[L]]:
    """Steps over the tree `root` (see the module docstring). With `pool`, up to `readahead`
    sub-listings of each folder are loaded ahead on it (a remote backend answers each in tens
    of milliseconds); `load` must then be thread-safe."""
    if readahead > 0 and pool is None:
        raise ValueError("readahead needs a pool")
    walker = _Walker(load, seen, on_error, readahead if pool is not None else 0, pool)
    try:
        yield from walker.run(root, prefix, listings, post_order)
    finally:
        walker.cancel()


class _Walker(Generic[L]):
    def __init__(
        self,
        load: Callable[[bytes], L],
        seen: Seen | None,
        on_error: ErrorSink | None,
        readahead: int,
        pool: Executor | None,
    ) -> None:
        self._load = load
        self._seen = seen
        self._on_error = on_error
        self._readahead = readahead
        self._pool = pool
        self._loading: dict[bytes, tuple[Future[L], _Frame[L]]] = {}  # and who asked
        self._on_path: set[bytes] = set()

    def run(self, root: bytes, prefix: bytes, listings: bool, post_order: bool) -> Iterator[Step[L]]:
        path = _PathBuffer(prefix)
        buf = path.buf
        seen = self._seen
        if seen is not None:
            if root in seen:
                return
            seen.add(root)
        try:
            nodes = self._load(root)
        except BackupfsError as exc:
            self._report(Step[L](Kind.LISTING, path, len(buf), None, 0), exc)
            return
        stack = [_Frame(root, nodes, len(buf), None, 0)]
        self._on_path.add(root)
        self._fill(stack[0])
        if listings:
            yield Step[L](Kind.LISTING, path, len(buf), None, 0, nodes)
        while stack:
            frame = stack[-1]
            if frame.at >= len(frame.nodes):
                stack.pop()
                self._on_path.discard(frame.tree_id)
                self._drop(frame)
                if post_order and frame.node is not None:
                    yield Step[L](Kind.LEAVE, path, frame.path_len, frame.node, frame.depth)
                continue
            node = frame.nodes[frame.at]
            frame.at += 1
            del buf[frame.path_len :]
            buf += b"/"
            buf += node.name
            path.moves += 1
            subtree = node.subtree if node.type == DIR else None
            step = Step[L](Kind.ENTRY, path, len(buf), node, len(stack), enter=subtree is not None)
            yield step
            if not step.enter or subtree is None:
                continue
            sub = self._enter(step, subtree)
            if sub is None:
                if post_order:
                    yield Step[L](Kind.LEAVE, path, len(buf), node, step.depth)
                continue
            child = _Frame(subtree, sub, len(buf), node, step.depth)
            stack.append(child)
            self._on_path.add(subtree)
            self._fill(child)
            if listings:
                yield Step[L](Kind.LISTING, path, len(buf), node, step.depth, sub)

    def _enter(self, step: Step[L], subtree: bytes) -> L | None:
        """The listing of the folder of `step`, or None when it is not walked (already seen,
        unreadable, or a cycle: the last two reported)."""
        if subtree in self._on_path:
            self._report(
                step,
                TreeCycle(
                    f"its listing {subtree.hex()[:16]} is that of a folder it lies in (a cycle, "
                    "only a forged repository has one): not entered"
                ),
            )
            return None
        seen = self._seen
        if seen is not None:
            if subtree in seen:
                return None
            seen.add(subtree)
        ahead = self._loading.pop(subtree, None)
        try:
            if ahead is None:
                return self._load(subtree)
            fut, owner = ahead
            owner.loading.remove(subtree)
            self._fill(owner)
            return fut.result()
        except BackupfsError as exc:
            self._report(step, exc)
            return None

    def _fill(self, frame: _Frame[L]) -> None:
        """Starts loading the frame's next sub-listings, up to `readahead` at once."""
        if not self._readahead:
            return
        assert self._pool is not None
        nodes = frame.nodes
        while len(frame.loading) < self._readahead and frame.ahead < len(nodes):
            node = nodes[frame.ahead]
            frame.ahead += 1
            tid = node.subtree
            if node.type != DIR or tid is None or tid in self._loading or tid in self._on_path:
                continue
            if self._seen is not None and tid in self._seen:
                continue
            self._loading[tid] = (self._pool.submit(self._load, tid), frame)
            frame.loading.append(tid)

    def _drop(self, frame: _Frame[L]) -> None:
        """Sub-listings loaded ahead that the walk did not enter (the caller pruned them)."""
        for tid in frame.loading:
            self._loading.pop(tid)[0].cancel()
        frame.loading.clear()

    def _report(self, step: Step[L], exc: BackupfsError) -> None:
        if self._on_error is None:
            raise exc
        self._on_error(step, exc)

    def cancel(self) -> None:
        for fut, _owner in self._loading.values():
            fut.cancel()
        self._loading.clear()


def shown(path: bytes) -> str:
    """A walk's path for a message: the root folder, whose path is empty, as `/`."""
    return path.decode("utf-8", "surrogateescape") or "/"
