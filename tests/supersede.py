"""Issue 10's attack, shared by the tests that prove a repository survives it: someone with the
password uploads a pack of garbage and one index file that supersedes every other, claiming
every data blob for the garbage (tree packs listed truthfully, so that prune can still walk the
snapshots). Nothing is deleted or overwritten, yet every real data pack then looks like a
left-over that no index lists."""

from __future__ import annotations

import os

from backupfs.backends.base import FileType
from backupfs.crypto import file_id
from backupfs.format.pack import DATA, PackEntry
from backupfs.repository.repo import Repository


def supersede_everything(repo: Repository) -> str:
    """Does it; returns the forged index file's name."""
    files = repo.index_files()
    garbage = os.urandom(4096)
    gid = bytes.fromhex(file_id(garbage))
    repo.backend.save(FileType.DATA, gid.hex(), garbage)
    packs: dict[bytes, list[PackEntry]] = {}
    claimed: list[PackEntry] = []
    for f in files.values():
        for pid, entries in f.packs.items():
            if entries[0].type == DATA:
                claimed += [PackEntry(e.type, e.id, 0, 64, e.raw_length) for e in entries]
            else:
                packs[pid] = entries
    packs[gid] = claimed
    return repo.save_index(packs, supersedes=[bytes.fromhex(n) for n in files])


def undo(repo: Repository, real_index_files: list[str], forged: str) -> None:
    """The way back (what `repair index` writes): one index listing the real packs again,
    superseding the forged one."""
    real = [repo.load_index_file(n) for n in real_index_files]
    repo.save_index({p: e for f in real for p, e in f.packs.items()}, supersedes=[bytes.fromhex(forged)])
