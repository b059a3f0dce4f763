"""Forging hostile repositories with the real key, as someone holding the password could.

Trees are written as msgpack by hand, past the tree encoder (which sorts entries and would refuse
some values), so a test stores exactly the bytes it means. The CLI and the mount then read them
as they read any repository (`mounting.Cli` runs the real command line on it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
from mounting import PASSWORD

from backupfs.backends.local import LocalBackend
from backupfs.format.pack import DATA, TREE
from backupfs.format.snapshot import Snapshot
from backupfs.repository.repo import Repository

NO_TRACEBACK = ("Traceback", "internal error")


class Forge:
    """Writes blobs, hand-made trees and snapshots into an existing repository."""

    def __init__(self, repo_path: Path) -> None:
        self.repo = Repository.open(LocalBackend(str(repo_path)), PASSWORD.encode())
        self.repo.load_index()

    def data(self, content: bytes) -> bytes:
        return self.repo.save_blob(DATA, content)[0]

    def tree(self, entries: list[Any], tree_id: bytes | None = None) -> bytes:
        """A tree blob holding `entries` exactly as given (any msgpack values, in this order).
        With `tree_id`, it is sealed under that id rather than the keyed hash of its bytes: only
        the key's holder can do so, and it is the only way to make a folder contain itself."""
        raw = msgpack.packb({"v": 1, "entries": entries}, use_bin_type=True)
        return self.repo.save_blob(TREE, raw, blob_id=tree_id)[0]

    def file(self, name: bytes, content: bytes, **fields: Any) -> dict[str, Any]:
        """A regular file entry as the encoder writes one; `fields` override its keys."""
        entry: dict[str, Any] = {"n": name, "t": "f", "m": 0o644, "u": 0, "g": 0, "mt": 10**18, "at": 10**18}
        entry.update(ct=10**18, s=len(content), c=[[0, self.data(content)]] if content else [])
        entry.update(fields)
        return entry

    def folder(self, name: bytes, entries: list[Any], **fields: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"n": name, "t": "d", "m": 0o755, "u": 0, "g": 0, "mt": 10**18, "at": 10**18}
        entry.update(ct=10**18, s=0, st=self.tree(entries))
        entry.update(fields)
        return entry

    def snapshot(self, root_entries: list[Any], **fields: Any) -> str:
        """A snapshot whose root tree holds `root_entries`; written after its blobs are indexed."""
        return self.snapshot_of(self.tree(root_entries), **fields)

    def snapshot_of(self, root: bytes, **fields: Any) -> str:
        """A snapshot of the tree `root`; written after its blobs are indexed."""
        self.repo.flush()
        snap = Snapshot(time_ns=time.time_ns(), host="host", user="user", paths=["/"], tree=root)
        for key, value in fields.items():
            setattr(snap, key, value)
        return self.repo.save_snapshot(snap)

    def close(self) -> None:
        self.repo.close()


def assert_clean(stderr: bytes | str) -> None:
    """No crash: neither a traceback nor the CLI's 'internal error' line."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    for bad in NO_TRACEBACK:
        assert bad not in text, text
