"""Sizes of snapshots (`backupfs stats`): what a restore writes, what is stored, and the ratios.

Every distinct folder listing of the chosen snapshots is read once, however many snapshots share
it, and summarised (entries, file bytes, hard links, subfolders). What restoring each snapshot
would write is then added up from those summaries without reading anything again, so the cost
grows with the distinct folders, not with the number of snapshots. Hard-linked files count once
per snapshot, as restic does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Iterable

from backupfs.format.tree import DIR, FILE
from backupfs.repository.repo import Repository

_EMPTY: dict[tuple[int, int], int] = {}
_OFFSET = struct.Struct("<Q")


@dataclasses.dataclass(slots=True)
class _Listing:
    """One folder listing, summarised: what restore-size needs from it."""

    entries: int
    size: int  # bytes of the files that are not hard links
    links: dict[tuple[int, int], int]  # (device, inode) -> size of hard-linked files
    children: list[bytes]  # subfolder tree ids, repeated where two subfolders are equal


@dataclasses.dataclass(slots=True)
class Stats:
    snapshots_count: int = 0
    restore_size: int = 0  # bytes a restore of each snapshot writes, added up
    restore_entries: int = 0  # entries (files, folders, links, ...) those restores create
    unique_files: int = 0  # files distinct by content (restic's files-by-contents)
    unique_files_size: int = 0
    data_blobs: int = 0  # distinct chunks
    tree_blobs: int = 0  # distinct folder listings
    raw_size: int = 0  # their plaintext bytes
    data_size: int = 0  # the chunks' share of raw_size: file content, without the listings
    stored_size: int = 0  # their bytes in the repository (compressed, encrypted)
    envelope_overhead: int = 0  # the nonces, tags and compression bytes within stored_size
    missing_blobs: int = 0  # referenced but in no index: `check` explains

    @property
    def compression_ratio(self) -> float:
        """Plaintext bytes per compressed byte (envelope overhead left out: it is not compression)."""
        compressed = self.stored_size - self.envelope_overhead
        return self.raw_size / compressed if compressed > 0 else 1.0

    @property
    def deduplication_ratio(self) -> float:
        """Bytes restores would write per distinct byte of file content stored for them."""
        return self.restore_size / self.data_size if self.data_size > 0 else 1.0


def collect(repo: Repository, roots: Iterable[bytes]) -> Stats:
    """Statistics over the snapshots whose root trees are `roots` (one per snapshot)."""
    roots = list(roots)
    stats = Stats(snapshots_count=len(roots))
    listings: dict[bytes, _Listing] = {}
    data: set[bytes] = set()
    contents: set[bytes] = set()
    stack = list(dict.fromkeys(roots))
    while stack:  # every distinct listing once
        tree_id = stack.pop()
        if tree_id in listings:
            continue
        entries, size, links, children = 0, 0, _EMPTY, []
        for node in repo.load_tree(tree_id):
            entries += 1
            if node.type == DIR:
                if node.subtree is not None:
                    children.append(node.subtree)
                    if node.subtree not in listings:
                        stack.append(node.subtree)
                continue
            if node.type != FILE:
                continue
            if node.nlink is not None and node.nlink > 1 and node.inode:
                links = dict(links) if links is _EMPTY else links
                links[(node.device or 0, node.inode)] = node.size
            else:
                size += node.size
            content = node.content or ()
            data.update(blob_id for _offset, blob_id in content)
            key = hashlib.blake2b(_OFFSET.pack(node.size), digest_size=16)
            for offset, blob_id in content:
                key.update(_OFFSET.pack(offset) + blob_id)
            digest = key.digest()
            if digest not in contents:
                contents.add(digest)
                stats.unique_files += 1
                stats.unique_files_size += node.size
        listings[tree_id] = _Listing(entries, size, links, children)

    totals: dict[bytes, tuple[int, int, dict[tuple[int, int], int]]] = {}
    for root in roots:
        entries, size, links = _restore_totals(root, listings, totals)
        stats.restore_entries += entries
        stats.restore_size += size + sum(links.values())

    overhead = repo.cipher.overhead + 1  # nonce and tag, and the compression byte
    for blob_ids, is_tree in ((data, False), (listings.keys(), True)):
        for blob_id in blob_ids:
            loc = repo.index.lookup(blob_id)
            if loc is None:
                stats.missing_blobs += 1
                continue
            if is_tree:
                stats.tree_blobs += 1
            else:
                stats.data_blobs += 1
                stats.data_size += loc.raw_length
            stats.raw_size += loc.raw_length
            stats.stored_size += loc.length
            stats.envelope_overhead += overhead
    return stats


def _restore_totals(
    root: bytes, listings: dict[bytes, _Listing], totals: dict[bytes, tuple[int, int, dict[tuple[int, int], int]]]
) -> tuple[int, int, dict[tuple[int, int], int]]:
    """(entries, bytes of unlinked files, hard links) below `root`, children before parents, each
    listing once (`totals` is shared between snapshots)."""
    stack = [root]
    while stack:
        tree_id = stack[-1]
        if tree_id in totals:
            stack.pop()
            continue
        listing = listings[tree_id]
        pending = [c for c in listing.children if c not in totals]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        entries, size, links = listing.entries, listing.size, listing.links
        for child in listing.children:
            c_entries, c_size, c_links = totals[child]
            entries += c_entries
            size += c_size
            if c_links:
                links = {**links, **c_links}
        totals[tree_id] = (entries, size, links)
    return totals[root]
