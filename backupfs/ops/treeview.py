"""Reading stored trees by path: shared by ls, cat, restore and the mount."""

from __future__ import annotations

import os
from collections.abc import Iterator

from backupfs.errors import UsageError
from backupfs.format.tree import DIR, Node
from backupfs.repository.repo import Repository


def split_path(path: str | bytes) -> list[bytes]:
    raw = os.fsencode(path)
    return [c for c in raw.split(b"/") if c and c != b"."]


def lookup(repo: Repository, root: bytes, path: str | bytes) -> Node:
    """The node at `path` in the tree `root`; `/` gives a synthetic directory node for the root."""
    node = Node(name=b"/", type=DIR, mode=0o755, subtree=root)
    for part in split_path(path):
        if part == b"..":
            raise UsageError(f"path {os.fsdecode(path)!r} must not contain '..'")
        if node.type != DIR or node.subtree is None:
            raise UsageError(f"{os.fsdecode(path)}: not a directory in the snapshot")
        found = next((n for n in repo.load_tree(node.subtree) if n.name == part), None)
        if found is None:
            raise UsageError(f"{os.fsdecode(path)}: no such file or directory in the snapshot")
        node = found
    return node


def iter_tree(repo: Repository, tree_id: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
    """Depth-first (path, node) pairs, each directory before its contents."""
    for node in repo.load_tree(tree_id):
        path = prefix + b"/" + node.name
        yield path, node
        if node.type == DIR and node.subtree is not None:
            yield from iter_tree(repo, node.subtree, path)
