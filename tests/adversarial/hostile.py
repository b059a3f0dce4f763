"""Forging hostile repositories with the real key, as someone holding the password could.

Trees are written as msgpack by hand, past the tree encoder (which sorts entries and would refuse
some values), so a test stores exactly the bytes it means. The CLI and the mount then read them
as they read any repository (`mounting.Cli` runs the real command line on it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import msgpack
from mounting import PASSWORD

from backupfs.backends.base import FileType
from backupfs.backends.local import LocalBackend
from backupfs.compress import NONE, compress
from backupfs.crypto import file_id
from backupfs.format import index as index_fmt
from backupfs.format.pack import DATA, HEADER_AAD, TRAILER, TREE, PackEntry, blob_aad, encode_header
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


def supersede_with_garbage(
    repo: Repository, how: str, trees: bool = True, relist_real_packs: bool = False
) -> list[str]:
    """The append-only attack (issue 10): with the key, upload one garbage pack per blob type that
    claims every blob the index lists, and one index file that supersedes every existing index
    file and lists only those packs. Nothing is deleted or overwritten (an append-only server
    allows all of it). Returns the garbage packs' names.

    `how`: "random" packs are random bytes (their header does not authenticate); "forged" packs
    are well made with the key: an authentic header, and for each blob an envelope that
    authenticates under the blob's id but holds other bytes. Without `trees`, the new index
    lists the real tree packs as they are and only the data blobs move to garbage: every tree
    still reads, so a prune that trusts the index finds all data "in use" in the garbage pack.
    With `relist_real_packs`, every real data pack is listed too, but holding one made-up blob
    only: a prune that trusts the index sees nothing in use there.
    """
    entries: dict[bytes, PackEntry] = {}
    files = repo.index_files()
    for f in files.values():
        for es in f.packs.values():
            for e in es:
                entries.setdefault(e.id, e)
    packs: dict[bytes, list[PackEntry]] = {}
    if not trees:
        for f in files.values():
            packs.update((pid, es) for pid, es in f.packs.items() if es[0].type == TREE)
    if relist_real_packs:
        for f in files.values():
            for pid, es in f.packs.items():
                if es[0].type == DATA:
                    packs[pid] = [PackEntry(DATA, os.urandom(32), es[0].offset, es[0].length, es[0].raw_length)]
    names = []
    for btype in (DATA, TREE) if trees else (DATA,):
        mine = [e for e in entries.values() if e.type == btype]
        if not mine:
            continue
        body = bytearray()
        listed = []
        for e in mine:
            if how == "forged":
                envelope = repo.cipher.seal(compress(os.urandom(16), NONE), blob_aad(btype, e.id))
            else:
                envelope = os.urandom(e.length)
            listed.append(PackEntry(btype, e.id, len(body), len(envelope), e.raw_length))
            body += envelope
        if how == "forged":
            header = repo.cipher.seal(compress(encode_header(listed), NONE), HEADER_AAD)
            body += header + TRAILER.pack(len(header))
        else:
            body += os.urandom(64) + TRAILER.pack(60)
        name = file_id(bytes(body))
        repo.backend.save(FileType.DATA, name, bytes(body))
        packs[bytes.fromhex(name)] = listed
        names.append(name)
    plain = index_fmt.encode_index(
        ((pid, [e.as_tuple() for e in es]) for pid, es in packs.items()), [bytes.fromhex(n) for n in files]
    )
    repo.backend.save(FileType.INDEX, file_id(sealed := repo.cipher.seal(compress(plain, NONE), index_fmt.AAD)), sealed)
    return names
