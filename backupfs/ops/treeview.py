"""Reading stored trees by path: shared by ls, cat and restore.

Listings come through `Repository.load_tree`, under the reader rules of format.md 9: what an
entry could not show as stored is reported through `on_problem` with the folder it is in, so
each command says it once, with the path, and shows the rest.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator

from backupfs.errors import BackupfsError, UsageError
from backupfs.format.tree import DIR, UNREADABLE, EntryProblem, Listing, Node
from backupfs.ops.walk import Kind, Step, walk
from backupfs.repository.repo import Repository

# Told of each entry a listing left out or repaired: (the folder's path, what happened).
ProblemSink = Callable[[bytes, EntryProblem], None]


def split_path(path: str | bytes) -> list[bytes]:
    raw = os.fsencode(path)
    return [c for c in raw.split(b"/") if c and c != b"."]


def find(nodes: list[Node], name: bytes) -> Node | None:
    """The entry called `name` of a listing (sorted by the reader rules), or None."""
    i = bisect.bisect_left(nodes, name, key=_node_name)
    return nodes[i] if i < len(nodes) and nodes[i].name == name else None


def lookup(repo: Repository, root: bytes, path: str | bytes) -> Node:
    """The node at `path` in the tree `root`; `/` gives a synthetic directory node for the root."""
    node = Node(name=b"/", type=DIR, mode=0o755, subtree=root)
    for part in split_path(path):
        if part == b"..":
            raise UsageError(f"path {os.fsdecode(path)} must not contain '..'")
        if node.type != DIR or node.subtree is None:
            raise UsageError(f"{os.fsdecode(path)}: not a directory in the snapshot")
        found = find(repo.load_tree(node.subtree), part)
        if found is None:
            raise UsageError(f"{os.fsdecode(path)}: no such file or directory in the snapshot")
        node = found
    return node


def iter_tree(
    repo: Repository, tree_id: bytes, prefix: bytes = b"", on_problem: ProblemSink | None = None
) -> Iterator[tuple[bytes, Node]]:
    """Depth-first (path, node) pairs, each directory before its contents, through `walk` (so
    of any depth). A sub-folder whose listing cannot be read, or that would close a cycle, is
    reported (as an UNREADABLE entry of its parent) and skipped; only the first listing's
    failure raises."""

    def unreadable(folder: Step[Listing], exc: BackupfsError) -> None:
        if on_problem is None or folder.node is None:
            raise exc
        parent, _slash, name = folder.path.rpartition(b"/")
        on_problem(parent or b"/", EntryProblem(name, -1, f"its listing: {exc}", UNREADABLE))

    for step in walk(repo.load_tree, tree_id, prefix=prefix, listings=on_problem is not None, on_error=unreadable):
        if step.kind is Kind.ENTRY:
            assert step.node is not None
            yield step.path, step.node
        elif on_problem is not None and step.listing is not None:
            for problem in step.listing.problems:
                on_problem(step.path or b"/", problem)


def _node_name(node: Node) -> bytes:
    return node.name
