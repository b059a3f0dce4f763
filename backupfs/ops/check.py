"""Repository verification: structure always, pack contents with --read-data.

A damaged pack is reported by name together with the snapshots and file paths that use its blobs,
because "pack 3fa2… is corrupt" alone does not tell a user what they lost. Every error ends with
the command that fixes it, and that advice never costs a good snapshot: damage in the index is
sent to `repair index` first (a rebuilt index often makes the rest whole again).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from backupfs.backends.base import FileType
from backupfs.compress import decompress, file_limit
from backupfs.crypto import file_id
from backupfs.errors import BackendError, BackupfsError, IntegrityError, UsageError
from backupfs.format.pack import DATA, HEADER_AAD, TRAILER, TREE, PackEntry, decode_header, header_location
from backupfs.format.tree import DIR, FILE, EntryProblem, Listing, Node
from backupfs.ops.treeview import iter_tree
from backupfs.ops.walk import Kind, Step, shown, walk
from backupfs.repository.headers import DamagedBlobs
from backupfs.repository.repo import Repository

TREE_READERS = 4  # listings loaded ahead: a remote backend answers each in tens of milliseconds

# What a walk error names first: "snapshot 1a2b3c4d: ..." (a tree or blob of it), or the full
# id when the snapshot file itself cannot be read.
_SNAPSHOT_PART = re.compile(r"snapshot ([0-9a-f]{8}):")
_SNAPSHOT_FILE = re.compile(r"snapshot ([0-9a-f]{64}):")
_AFFECTED_SHOWN = 5  # snapshots named in one message; the rest are counted


@dataclasses.dataclass
class CheckResult:
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    damaged_packs: dict[str, str] = dataclasses.field(default_factory=dict)
    affected: list[str] = dataclasses.field(default_factory=list)
    # the commands that fix the errors found, in the order to run them
    fixes: list[str] = dataclasses.field(default_factory=list)
    foreign_files: list[str] = dataclasses.field(default_factory=list)
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
        self._index_damaged = False
        self._missing: dict[bytes, set[str]] = {}  # indexed pack gone -> snapshots that need it
        self._unlisted: dict[bytes, set[str]] = {}  # pack in no index -> snapshots that need it
        self._unlisted_blobs: dict[bytes, bytes] = {}  # blob id -> an unlisted pack holding it
        # blob in an unlisted pack, and listed elsewhere too -> (type, snapshots using it): the
        # listed copy is read once the walk is done; if it is bad, the unlisted pack is needed
        self._listed_too: dict[bytes, tuple[int, set[str]]] = {}

    def error(self, msg: str, fix: str | None = None) -> None:
        """One error, ending with the command that fixes it (`fix`, or the one for what the
        message names: a snapshot's tree or blob, or a snapshot file)."""
        fix = fix or self._fix_for(msg)
        if fix:
            msg = f"{msg} (fix: {fix})"
            if fix not in self.result.fixes:
                self.result.fixes.append(fix)
        self.result.errors.append(msg)
        self._log("error: " + msg)

    def _fix_for(self, msg: str) -> str | None:
        m = _SNAPSHOT_FILE.match(msg)
        if m:
            return f"the file cannot be read: `backupfs forget {m[1][:8]}` removes it, no other snapshot is affected"
        m = _SNAPSHOT_PART.match(msg)
        if m is None:
            return None
        if self._index_damaged or self._unlisted_blobs:
            # what looks lost may be in a pack the index does not list: rebuild it, then look again
            return "`backupfs repair index`, then `backupfs check` again"
        return f"`backupfs repair snapshots {m[1]}`"

    def run(self, read_data: bool = False, subset: str | None = None) -> CheckResult:
        # Snapshots are listed before the indexes are read: a backup running meanwhile writes its
        # index before its snapshot (format.md 12), so every snapshot seen here is fully indexed.
        snapshots = self.repo.file_names(FileType.SNAPSHOT)
        self._log("load indexes")
        self._check_index()
        self._log("check packs")
        self._check_packs()
        self._log("check snapshots, trees and blobs")
        self._check_snapshots(snapshots)
        self._report_packs()
        self._check_foreign()
        if read_data or subset:
            self._read_data(subset)
        return self.result

    # ---------------------------------------------------------------- structure

    def _check_index(self) -> None:
        names = self.repo.file_names(FileType.INDEX)
        superseded: set[bytes] = set()
        files = {}
        for name in names:
            try:
                files[name] = self.repo.load_index_file(name)
            except BackupfsError as exc:
                self._index_damaged = True
                self.error(f"index {name}: {exc}", "`backupfs repair index` (rebuilds the index from the packs)")
        for f in files.values():
            superseded.update(f.supersedes)
        for name, f in files.items():
            if bytes.fromhex(name) in superseded:
                continue
            for pack_id, entries in f.packs.items():
                self._indexed.setdefault(pack_id, entries)
                self.repo.index.add_pack(pack_id, entries)

    def _check_packs(self) -> None:
        present = {bytes.fromhex(n): size for n, size in self.repo.pack_files().items()}
        for pack_id, entries in self._indexed.items():
            size = present.get(pack_id)
            if size is None:
                self._missing[pack_id] = set()  # reported once the snapshots that need it are known
                self.result.damaged_packs[pack_id.hex()] = "missing"
                continue
            end = max((e.offset + e.length for e in entries), default=0)
            if end + TRAILER.size > size:
                self.error(
                    f"pack {pack_id.hex()} is truncated ({size} bytes, index needs more than {end})",
                    f"`backupfs repair packs {pack_id.hex()[:16]}` (keeps what can be read)",
                )
                self.result.damaged_packs[pack_id.hex()] = "truncated"
        # A pack no index lists is read (its header): it may hold what snapshots need, if an
        # index file is damaged or a forged one supersedes the real ones.
        unlisted = [(p.hex(), size) for p, size in present.items() if p not in self._indexed]
        for name, _size, header in self.repo.read_headers(unlisted):
            pack_id = bytes.fromhex(name)
            if isinstance(header, IntegrityError):
                self.result.warnings.append(
                    f"pack {name} is not referenced by any index and its header cannot be read ({header}); "
                    "nothing can use it: prune removes it"
                )
                continue
            self._unlisted[pack_id] = set()
            for e in header:
                self._unlisted_blobs.setdefault(e.id, pack_id)

    def _report_packs(self) -> None:
        """Missing and unlisted packs, once the walk has told which snapshots need them."""
        self._read_listed_copies()
        if self._missing:
            self._root_users()
        for pack_id, users in self._missing.items():
            if users:
                names = _names(users)
                self.error(
                    f"pack {pack_id.hex()} is in the index but missing from the repository; "
                    f"snapshots {names} need data it held",
                    "`backupfs repair index`, then back up the lost files again or "
                    f"`backupfs repair snapshots {' '.join(sorted(u[:8] for u in users))}`",
                )
            else:
                self.error(
                    f"pack {pack_id.hex()} is in the index but missing from the repository; no snapshot needs it",
                    "`backupfs repair index` (or `backupfs prune`, which drops it from the index)",
                )
        for pack_id, users in self._unlisted.items():
            if users:
                self.error(
                    f"pack {pack_id.hex()} is needed by snapshots {_names(users)}, listed by no index "
                    "(an index file is damaged, deleted, or superseded by a forged one)",
                    "`backupfs repair index`",
                )
            else:
                self.result.warnings.append(
                    f"pack {pack_id.hex()} is not referenced by any index (left by an interrupted backup; "
                    "prune reclaims it)"
                )

    def _root_users(self) -> None:
        """The walk notes who needs a missing pack when it meets a reference to it; a snapshot's
        root listing is met by no reference, so its snapshot is noted here."""
        for sid, snap in self.repo.list_snapshots(on_damaged=lambda _n, _e: None):
            listed = [loc for loc in self.repo.index.locations(snap.tree) if loc.pack_id in self._indexed]
            if listed and all(loc.pack_id in self._missing for loc in listed):
                for loc in listed:
                    self._missing[loc.pack_id].add(sid)

    def _read_listed_copies(self) -> None:
        """Blobs in use that an unlisted pack holds while the index lists them elsewhere: the
        listed copy is read (authenticated, hashed). Good, and the unlisted pack is a left-over
        (a killed prune, a concurrent backup); bad, and the unlisted pack is needed: an index
        may claim a copy that is not there (a forged one, written with the key)."""
        if not self._listed_too:
            return
        self._log(f"read {len(self._listed_too)} blobs that packs no index lists hold too")

        def good(item: tuple[bytes, tuple[int, set[str]]]) -> bool:
            blob_id, (btype, _snaps) = item
            for loc in self.repo.index.locations(blob_id):
                if loc.pack_id in self._indexed and loc.pack_id not in self._missing:
                    try:
                        self.repo.load_blob_at(btype, blob_id, loc)
                        return True
                    except IntegrityError:
                        continue
            return False

        items = list(self._listed_too.items())
        with ThreadPoolExecutor(4, thread_name_prefix="bfs-check-copy") as pool:
            for (blob_id, (_t, snaps)), ok in zip(items, pool.map(good, items), strict=True):
                if not ok:
                    self._unlisted[self._unlisted_blobs[blob_id]].update(snaps)

    def _check_foreign(self) -> None:
        """Files in the repository's folders that are not repository files: backupfs neither
        reads nor deletes them (format.md 2), so only this tells that they are there."""
        for path in self.repo.foreign_files():
            self.result.foreign_files.append(path)
            self.result.warnings.append(
                f"{path} is not a repository file (backupfs ignores it, prune leaves it); remove it if it is not yours"
            )

    def _check_snapshots(self, snapshots: list[str]) -> None:
        seen_trees: set[bytes] = set()  # each tree is checked once, however many snapshots share it
        with ThreadPoolExecutor(TREE_READERS, thread_name_prefix="bfs-check-tree") as pool:
            for name in snapshots:
                try:
                    snap = self.repo.load_snapshot(name)
                except BackupfsError as exc:
                    self.error(f"snapshot {name}: {exc}")
                    continue
                self.result.snapshots += 1
                self._check_trees(name, snap.tree, seen_trees, pool)

    def _check_trees(self, name: str, root: bytes, seen: set[bytes], pool: ThreadPoolExecutor) -> None:
        def unreadable(folder: Step[Listing], exc: BackupfsError) -> None:
            tree_id = folder.node.subtree if folder.node is not None and folder.node.subtree else root
            self.error(f"snapshot {name[:8]}: tree {tree_id.hex()[:16]} at {shown(folder.path)}: {exc}")

        steps = walk(
            self.repo.load_tree,
            root,
            listings=True,
            seen=seen,
            on_error=unreadable,
            readahead=TREE_READERS,
            pool=pool,
        )
        for step in steps:
            node = step.node
            if step.kind is Kind.LISTING:
                assert step.listing is not None
                self.result.trees += 1
                for problem in step.listing.problems:
                    self.error(f"snapshot {name[:8]}: {problem.text(shown(step.path))}")
                if step.listing.unsorted:
                    self.result.warnings.append(
                        f"snapshot {name[:8]}: the entries of {shown(step.path)} are not sorted by name (readers sort them)"
                    )
            elif node is None:
                continue
            elif step.enter and node.subtree is not None:
                step.enter = self._blob_type_ok(name, step, node.subtree, TREE)
            elif node.type == FILE and node.defect is None:  # a defect is a problem above
                self._check_content(name, step, node)

    def _blob_type_ok(self, snap: str, where: Step[Listing], blob_id: bytes, btype: int) -> bool:
        """Whether the index lists `blob_id` as a blob of the type the tree needs there (with
        --read-data every pack's blobs are opened as the type the index says, so that is true).
        Also notes which snapshots need a missing pack, or a pack that no index lists."""
        listed = [loc for loc in self.repo.index.locations(blob_id) if loc.pack_id in self._indexed]
        loc = listed[0] if listed else None
        what = "listing" if btype == TREE else "chunk"
        found_unlisted = self._unlisted_blobs.get(blob_id)
        if found_unlisted is not None:
            if not listed or all(lo.pack_id in self._missing for lo in listed):
                self._unlisted[found_unlisted].add(snap)  # the pack error names it: no error per blob
                return True
            self._listed_too.setdefault(blob_id, (btype, set()))[1].add(snap)
        if loc is None:
            self.error(f"snapshot {snap[:8]}: {shown(where.path)}: {what} {blob_id.hex()[:16]} is not indexed")
            return False
        if all(lo.pack_id in self._missing for lo in listed):
            for lo in listed:
                self._missing[lo.pack_id].add(snap)
        if loc.type != btype:
            found = "file data" if loc.type == DATA else "a folder listing"
            self.error(f"snapshot {snap[:8]}: {shown(where.path)}: {what} {blob_id.hex()[:16]} is {found}, not a {what}")
            return False
        return True

    def _check_content(self, snap: str, where: Step[Listing], node: Node) -> None:
        """A file's chunks: indexed, data blobs, and none running into the next one (readers cut
        a chunk at the next offset, so such a file does not read back as it was written)."""
        content = node.content or []
        for j, (off, bid) in enumerate(content):
            if not self._blob_type_ok(snap, where, bid, DATA):
                return
            length = self.repo.index.raw_length(bid) or 0
            if j + 1 < len(content) and off + length > content[j + 1][0]:
                self.error(f"snapshot {snap[:8]}: {shown(where.path)}: the chunk at offset {off} runs into the next one")
                return

    # ---------------------------------------------------------------- data

    def _read_data(self, subset: str | None) -> None:
        packs = sorted(self._indexed)
        if subset:
            packs = select_subset(packs, subset)
        self._log(f"read {len(packs)} packs")
        self.result.packs_to_read = len(packs)
        bad_blobs: set[bytes] = set()
        found: dict[bytes, set[bytes]] = {}
        with ThreadPoolExecutor(4, thread_name_prefix="bfs-check") as pool:
            for pack_id, (problem, bad) in zip(packs, pool.map(self._verify_pack, packs), strict=True):
                self.result.packs_read += 1
                if problem is not None:
                    self.result.damaged_packs[pack_id.hex()] = problem
                    self.error(
                        f"pack {pack_id.hex()}: {problem}",
                        f"`backupfs repair packs {pack_id.hex()[:16]}` (keeps what can be read), then back up "
                        "again to store the lost chunks anew (or `backupfs repair snapshots`)",
                    )
                    bad_blobs |= bad
                    for b in bad:
                        found.setdefault(b, set()).add(pack_id)
        # Remembered locally: readers try other copies first, and the next backup stores these
        # chunks again instead of reusing them (architecture.md 4).
        DamagedBlobs(self.repo.cache_dir, self.repo.header.repo_id).update(set(packs), found)
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
            data = self.repo.load_pack(name)
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
        for name in self.repo.file_names(FileType.SNAPSHOT):
            try:
                snap = self.repo.load_snapshot(name)
            except BackupfsError:
                continue
            try:
                for path, node in iter_tree(self.repo, snap.tree, on_problem=_ignore):
                    ids: Iterable[bytes] = (bid for _o, bid in node.content or ())
                    if node.type == DIR and node.subtree in bad_blobs:
                        ids = [node.subtree]
                    if any(b in bad_blobs for b in ids):
                        self.result.affected.append(f"snapshot {name[:8]}: {shown(path)}")
            except BackupfsError:
                continue  # its root listing is unreadable: the structure check said so


def _ignore(_folder: bytes, _problem: EntryProblem) -> None:
    """What cannot be read is reported by the structure check already."""


def _names(snapshots: set[str]) -> str:
    names = sorted(s[:8] for s in snapshots)
    more = f" and {len(names) - _AFFECTED_SHOWN} more" if len(names) > _AFFECTED_SHOWN else ""
    return ", ".join(names[:_AFFECTED_SHOWN]) + more


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
