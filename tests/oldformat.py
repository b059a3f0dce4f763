"""Snapshots as an older backupfs wrote them: the same trees without the whole-file hash `fh`
(format.md 9), to prove that newer code reads, reuses and verifies them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from support.cli import PASSWORD

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.repository.repo import Repository


def strip_file_hashes(repo_path: Path, snapshot: str = "latest") -> str:
    """Replaces a snapshot by one whose trees hold no `fh`; returns the new snapshot's id."""
    repo = Repository.open(LocalBackend(str(repo_path)), PASSWORD.encode())
    try:
        repo.load_index()
        sid, snap = repo.find_snapshot(snapshot)

        def rewrite(tree_id: bytes) -> bytes:  # test trees are shallow: recursion is fine
            nodes = []
            for node in repo.load_tree_as_stored(tree_id):
                node = dataclasses.replace(node, file_hash=None)
                if node.subtree is not None:
                    node.subtree = rewrite(node.subtree)
                nodes.append(node)
            return repo.save_tree(nodes)

        snap.tree = rewrite(snap.tree)
        repo.flush()
        new = repo.save_snapshot(snap)
        repo.backend.remove(FileType.SNAPSHOT, sid)
        return new
    finally:
        repo.close()
