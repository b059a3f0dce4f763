"""Repository verification: structure always, pack contents with --read-data.

A damaged pack is reported by name together with the snapshots and file paths that use its blobs,
because "pack 3fa2… is corrupt" alone does not tell a user what they lost.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from backupfs.backends.base import FileType
from backupfs.compress import decompress, file_limit
from backupfs.crypto import file_id
from backupfs.errors import BackendError, BackupfsError, IntegrityError, UsageError
from backupfs.format.pack import DATA, HEADER_AAD, TRAILER, TREE, PackEntry, decode_header, header_location
from backupfs.format.tree import DIR, FILE, Node
from backupfs.repository.repo import Repository


@dataclasses.dataclass
class CheckResult:
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    damaged_packs: dict[str, str] = dataclasses.field(default_factory=dict)
    affected: list[str] = dataclasses.field(default_factory=list)
    packs_read: int = 0
    packs_to_read: int = 0  # known once reading starts: progress shows packs_read against it
    snapshots: int = 0
    trees: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


class Checker:
    def __init__(self, repo: Repository, log: Callable[[str], None] = lambda _m: None) -> None:
        self.repo = repo
        self.result = CheckResult()
        self._log = log
        self._indexed: dict[bytes, list[PackEntry]] = {}

    def error(self, msg: str) -> None:
        self.result.errors.append(msg)
        self._log("error: " + msg)

    def run(self, read_data: bool = False, subset: str | None = None) -> CheckResult:
        # Snapshots are listed before the indexes are read: a backup running meanwhile writes its
        # index before its snapshot (design.md 12), so every snapshot seen here is fully indexed.
        snapshots = [n for n, _ in self.repo.backend.list(FileType.SNAPSHOT)]
        self._log("load indexes")
        self._check_index()
        self._log("check packs")
        self._check_packs()
        self._log("check snapshots, trees and blobs")
        self._check_snapshots(snapshots)
        if read_data or subset:
            self._read_data(subset)
        return self.result

    # ---------------------------------------------------------------- structure

    def _check_index(self) -> None:
        names = [n for n, _ in self.repo.backend.list(FileType.INDEX)]
        superseded: set[bytes] = set()
        files = {}
        for name in names:
            try:
                files[name] = self.repo.load_index_file(name)
            except BackupfsError as exc:
                self.error(f"index {name}: {exc}")
        for f in files.values():
            superseded.update(f.supersedes)
        for name, f in files.items():
            if bytes.fromhex(name) in superseded:
                continue
            for pack_id, entries in f.packs.items():
                self._indexed.setdefault(pack_id, entries)
                self.repo.index.add_pack(pack_id, entries)

    def _check_packs(self) -> None:
        present = {bytes.fromhex(n): size for n, size in self.repo.backend.list(FileType.DATA)}
        for pack_id, entries in self._indexed.items():
            size = present.get(pack_id)
            if size is None:
                self.error(f"pack {pack_id.hex()} is in the index but missing from the repository")
                self.result.damaged_packs[pack_id.hex()] = "missing"
                continue
            end = max((e.offset + e.length for e in entries), default=0)
            if end + TRAILER.size > size:
                self.error(f"pack {pack_id.hex()} is truncated ({size} bytes, index needs more than {end})")
                self.result.damaged_packs[pack_id.hex()] = "truncated"
        for pack_id in present.keys() - self._indexed.keys():
            self.result.warnings.append(
                f"pack {pack_id.hex()} is not referenced by any index (left by an interrupted backup; prune reclaims it)"
            )

    def _check_snapshots(self, snapshots: list[str]) -> None:
        seen_trees: set[bytes] = set()
        for name in snapshots:
            try:
                snap = self.repo.load_snapshot(name)
            except BackupfsError as exc:
                self.error(f"snapshot {name}: {exc}")
                continue
            self.result.snapshots += 1
            stack = [(snap.tree, "/")]
            while stack:
                tree_id, path = stack.pop()
                if tree_id in seen_trees:
                    continue
                seen_trees.add(tree_id)
                try:
                    nodes = self.repo.load_tree(tree_id)
                except BackupfsError as exc:
                    self.error(f"snapshot {name[:8]}: tree {tree_id.hex()[:16]} at {path}: {exc}")
                    continue
                self.result.trees += 1
                for problem in nodes.problems:
                    self.error(f"snapshot {name[:8]}: {problem.text(path)}")
                if nodes.unsorted:
                    self.result.warnings.append(
                        f"snapshot {name[:8]}: the entries of {path} are not sorted by name (readers sort them)"
                    )
                for node in nodes:
                    child = path.rstrip("/") + "/" + os.fsdecode(node.name)
                    if node.type == DIR and node.subtree is not None:
                        if self._blob_type_ok(name, child, node.subtree, TREE):
                            stack.append((node.subtree, child))
                    elif node.type == FILE and node.defect is None:  # a defect is a problem above
                        self._check_content(name, child, node)

    def _blob_type_ok(self, snap: str, path: str, blob_id: bytes, btype: int) -> bool:
        """Whether the index lists `blob_id` as a blob of the type the tree needs there (with
        --read-data every pack's blobs are opened as the type the index says, so that is true)."""
        loc = self.repo.index.lookup(blob_id)
        what = "listing" if btype == TREE else "chunk"
        if loc is None:
            self.error(f"snapshot {snap[:8]}: {path}: {what} {blob_id.hex()[:16]} is not indexed")
            return False
        if loc.type != btype:
            found = "file data" if loc.type == DATA else "a folder listing"
            self.error(f"snapshot {snap[:8]}: {path}: {what} {blob_id.hex()[:16]} is {found}, not a {what}")
            return False
        return True

    def _check_content(self, snap: str, path: str, node: Node) -> None:
        """A file's chunks: indexed, data blobs, and none running into the next one (readers cut
        a chunk at the next offset, so such a file does not read back as it was written)."""
        content = node.content or []
        for j, (off, bid) in enumerate(content):
            if not self._blob_type_ok(snap, path, bid, DATA):
                return
            length = self.repo.index.raw_length(bid) or 0
            if j + 1 < len(content) and off + length > content[j + 1][0]:
                self.error(f"snapshot {snap[:8]}: {path}: the chunk at offset {off} runs into the next one")
                return

    # ---------------------------------------------------------------- data

    def _read_data(self, subset: str | None) -> None:
        packs = sorted(self._indexed)
        if subset:
            packs = select_subset(packs, subset)
        self._log(f"read {len(packs)} packs")
        self.result.packs_to_read = len(packs)
        bad_blobs: set[bytes] = set()
        with ThreadPoolExecutor(4, thread_name_prefix="bfs-check") as pool:
            for pack_id, (problem, bad) in zip(packs, pool.map(self._verify_pack, packs), strict=True):
                self.result.packs_read += 1
                if problem is not None:
                    self.result.damaged_packs[pack_id.hex()] = problem
                    self.error(f"pack {pack_id.hex()}: {problem}")
                    bad_blobs |= bad
        if bad_blobs:
            self._find_affected(bad_blobs)

    def _verify_pack(self, pack_id: bytes) -> tuple[str | None, set[bytes]]:
        """(what is wrong with the pack or None, ids of the blobs it loses).

        A damaged pack is still searched blob by blob, at the places the index gives (where
        restore reads them): one flipped byte costs the files using one blob, not every file
        with a blob in the pack, and the report should say so.
        """
        name = pack_id.hex()
        entries = self._indexed[pack_id]
        try:
            data = self.repo.backend.load(FileType.DATA, name)
        except BackendError as exc:
            return f"cannot read: {exc}", {e.id for e in entries}
        problems = []
        if file_id(data) != name:
            problems.append("content does not match its name (bit rot or tampering)")
        try:
            hoff, hlen = header_location(len(data), data[-TRAILER.size :])
            header = decode_header(
                decompress(self.repo.cipher.open(data[hoff : hoff + hlen], HEADER_AAD), file_limit(hlen))
            )
            if {(e.id, e.offset, e.length) for e in header} != {(e.id, e.offset, e.length) for e in entries}:
                problems.append("header does not match the index")
        except IntegrityError as exc:
            problems.append(f"header: {exc}")
        bad: set[bytes] = set()
        for e in entries:
            envelope = data[e.offset : e.offset + e.length]
            try:
                if len(envelope) != e.length:
                    raise IntegrityError(f"blob {e.id.hex()[:16]} lies beyond the end of the pack")
                plain = self.repo.open_blob(e.type, e.id, envelope, name, e.raw_length)
                if len(plain) != e.raw_length or self.repo.blob_id(plain) != e.id:
                    raise IntegrityError(f"blob {e.id.hex()[:16]} does not hash to its id")
            except IntegrityError as exc:
                if not bad:
                    problems.append(str(exc).removeprefix(f"pack {name}: "))
                bad.add(e.id)
        if bad:
            problems.append(f"{len(bad)} of {len(entries)} blobs are damaged")
        return ("; ".join(problems) if problems else None), bad

    def _find_affected(self, bad_blobs: set[bytes]) -> None:
        """Names the snapshots and files whose content is in damaged blobs."""
        for name, _size in self.repo.backend.list(FileType.SNAPSHOT):
            try:
                snap = self.repo.load_snapshot(name)
            except BackupfsError:
                continue
            for path, node in _walk(self.repo, snap.tree, "/"):
                ids: Iterable[bytes] = (bid for _o, bid in node.content or ())
                if node.type == DIR and node.subtree in bad_blobs:
                    ids = [node.subtree]
                if any(b in bad_blobs for b in ids):
                    self.result.affected.append(f"snapshot {name[:8]}: {path}")


def _walk(repo: Repository, tree_id: bytes, path: str) -> Iterator[tuple[str, Node]]:
    try:
        nodes = repo.load_tree(tree_id)
    except BackupfsError:
        return
    for node in nodes:
        child = path.rstrip("/") + "/" + os.fsdecode(node.name)
        yield child, node
        if node.type == DIR and node.subtree is not None:
            yield from _walk(repo, node.subtree, child)


def select_subset(packs: list[bytes], spec: str) -> list[bytes]:
    """`10%` (random sample), or `n/m` (the n-th of m deterministic groups, as restic)."""
    try:
        if spec.endswith("%"):
            pct = float(spec[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            k = max(1, round(len(packs) * pct / 100)) if packs else 0
            return sorted(random.sample(packs, k))
        n, m = (int(x) for x in spec.split("/"))
        if not 1 <= n <= m:
            raise ValueError
        return [p for p in packs if int.from_bytes(p[:4], "big") % m == n - 1]
    except ValueError:
        raise UsageError(f"invalid --read-data-subset {spec!r} (use e.g. 10% or 1/5)") from None
