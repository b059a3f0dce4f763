"""What a restore drill reads: the record history, and the sample it draws (format.md 14).

The population is every regular file of the chosen snapshots, walked newest snapshot first and
each tree once. It is held in flat arrays (a sort key, a size, and where the file lies: a folder
number and its position in that folder's listing), about 40 bytes a file, so a repository of
millions of files can be sampled without a Node kept for each; only the chosen files' listings
are loaded again.
"""

from __future__ import annotations

import dataclasses
import random
from array import array
from collections.abc import Callable, Iterable

from backupfs.errors import BackupfsError, IntegrityError
from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import FILE, SKIPPED, Listing, Node
from backupfs.format.verifyrecord import VerifyRecord
from backupfs.ops.walk import Kind, Step, shown, walk
from backupfs.repository.repo import Repository

HOUR_NS = 3600 * 10**9
STALE_CAP_HOURS = 1 << 20  # ~120 years: staler than any real pack, and exact in a float key
NEVER_HOURS = STALE_CAP_HOURS + 1  # a pack no record names
MiB = 1 << 20
DEFAULT_BUDGET_BYTES = 1 << 30  # when no --files, --max-bytes or --sample is given


# --------------------------------------------------------------------------- history


class History:
    """The drills recorded in a repository, oldest first (by end time)."""

    def __init__(self, records: list[tuple[str, VerifyRecord]]) -> None:
        self.records = records

    def before(self, start_ns: int) -> History:
        """The records of drills that had ended when a drill started at `start_ns`."""
        return History([(n, r) for n, r in self.records if r.end_ns < start_ns])

    def with_seed(self, seed: int) -> VerifyRecord | None:
        """The newest drill that used `seed`, if any."""
        found = [r for _n, r in self.records if r.seed == seed]
        return found[-1] if found else None

    def pack_times(self) -> dict[bytes, int]:
        """Each data pack named by a record -> the end of the newest such drill."""
        out: dict[bytes, int] = {}
        for _name, record in self.records:
            for pack in record.packs:
                out[pack] = max(out.get(pack, 0), record.end_ns)
        return out

    def last(self) -> VerifyRecord | None:
        return self.records[-1][1] if self.records else None

    def last_ok(self) -> VerifyRecord | None:
        found = [r for _n, r in self.records if r.ok]
        return found[-1] if found else None

    def by_snapshot(self) -> dict[bytes, tuple[int, bool]]:
        """Snapshot id -> (end of the newest drill naming it, whether its files all passed)."""
        out: dict[bytes, tuple[int, bool]] = {}
        for _name, record in self.records:
            for tally in record.snapshots:
                out[tally.snapshot] = (record.end_ns, tally.failed == 0)
        return out

    def coverage(self, pack_sizes: dict[bytes, int], since_ns: int) -> float:
        """The share of the bytes of `pack_sizes` (the data packs now) read by drills that ended
        after `since_ns`."""
        total = sum(pack_sizes.values())
        if not total:
            return 0.0
        read: set[bytes] = set()
        for _name, record in self.records:
            if record.end_ns >= since_ns:
                read.update(record.packs)
        return sum(size for pack, size in pack_sizes.items() if pack in read) / total


def load_history(repo: Repository, warn: Callable[[str], None]) -> History:
    def damaged(name: str, exc: IntegrityError) -> None:
        warn(f"verify record {name[:8]} skipped: {exc}")

    return History(repo.list_verify_records(on_damaged=damaged))


# --------------------------------------------------------------------------- sample


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    """What a drill may read; None is no limit. `share` is --sample's fraction of the population."""

    files: int | None = None
    max_bytes: int | None = None
    share: float | None = None

    def byte_limit(self, population_bytes: int) -> int | None:
        limits = [b for b in (self.max_bytes,) if b is not None]
        if self.share is not None:
            limits.append(int(self.share * population_bytes))
        if not limits and self.files is None:
            return DEFAULT_BUDGET_BYTES
        return min(limits) if limits else None


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One file to verify: where it is, and its node as the reader rules give it."""

    sid: str
    snapshot: Snapshot
    path: bytes  # in the snapshot, from its root: b"/home/me/file"
    node: Node
    repairs: tuple[str, ...]  # what the reader rules had to repair in it (restore refuses it then)


@dataclasses.dataclass
class Plan:
    seed: int
    samples: list[Sample]
    population_files: int = 0
    population_bytes: int = 0
    too_large: int = 0  # files larger than the whole byte budget: never drawn with it
    problems: list[tuple[str, bytes, str]] = dataclasses.field(default_factory=list)  # (sid, path, what)
    tree_packs: set[bytes] = dataclasses.field(default_factory=set)  # of the listings read, all authentic

    @property
    def planned_bytes(self) -> int:
        return sum(s.node.size for s in self.samples)


@dataclasses.dataclass(slots=True)
class _Folder:
    snap: int  # index into the snapshots
    path: bytes
    tree: bytes
    entries: int = 0  # entries seen so far: the next one's position in the listing


def draw(
    repo: Repository,
    snapshots: list[tuple[str, Snapshot]],
    budget: Budget,
    seed: int,
    pack_times: dict[bytes, int],
    now_ns: int,
) -> Plan:
    """The drill's sample of the files of `snapshots` (given newest first), stalest packs first
    and then a size-weighted random order (format.md 14)."""
    rng = random.Random(seed)
    keys = array("d")
    sizes = array("q")
    where = array("Q")  # folder number << 32 | position in its listing
    folders: list[_Folder] = []
    plan = Plan(seed, [])
    seen: set[bytes] = set()
    index = repo.index
    for snap_no, (sid, snap) in enumerate(snapshots):

        def unreadable(folder: Step[Listing], exc: BackupfsError, sid: str = sid) -> None:
            plan.problems.append((sid, folder.path or b"/", f"its folder listing cannot be read: {exc}"))

        stack: list[int] = []
        steps = walk(repo.load_tree, snap.tree, listings=True, post_order=True, seen=seen, on_error=unreadable)
        for step in steps:
            if step.kind is Kind.LISTING:
                assert step.listing is not None
                tree = snap.tree if step.node is None else step.node.subtree
                assert tree is not None
                stack.append(len(folders))
                folders.append(_Folder(snap_no, step.path, tree))
                loc = index.lookup(tree)
                if loc is not None:
                    plan.tree_packs.add(loc.pack_id)
                for problem in step.listing.problems:  # the rest come up if their entry is drawn
                    if problem.kind == SKIPPED:
                        where_shown = shown(step.path)
                        what = problem.text(where_shown).removeprefix(f"{where_shown}: ")
                        plan.problems.append((sid, step.path or b"/", what))
                continue
            if step.kind is Kind.LEAVE:  # of a folder whose listing was read, or not (seen, unreadable)
                if folders[stack[-1]].path == step.path:
                    stack.pop()
                continue
            folder = folders[stack[-1]]
            position = folder.entries
            folder.entries += 1
            node = step.node
            assert node is not None
            if node.type != FILE or node.size <= 0:
                continue
            oldest = now_ns
            for _off, bid in node.content or ():
                loc = index.lookup(bid)
                oldest = min(oldest, pack_times.get(loc.pack_id, 0) if loc is not None else 0)
            hours = NEVER_HOURS if oldest == 0 else min(STALE_CAP_HOURS, (now_ns - oldest) // HOUR_NS)
            t = rng.expovariate(1.0) / (node.size / MiB)
            keys.append(t / (1.0 + t) - hours)
            sizes.append(node.size)
            where.append(stack[-1] << 32 | position)
    plan.population_files = len(sizes)
    plan.population_bytes = sum(sizes)
    chosen = _take(sorted(range(len(keys)), key=keys.__getitem__), sizes, budget, plan)
    plan.samples = _materialise(repo, snapshots, folders, [where[i] for i in chosen])
    return plan


def _take(order: Iterable[int], sizes: array[int], budget: Budget, plan: Plan) -> list[int]:
    """Files in `order` while they fit the budget; one larger than what is left is passed over,
    and if none fits at all, the first one is taken."""
    limit = budget.byte_limit(plan.population_bytes)
    taken: list[int] = []
    first = None
    used = 0
    for i in order:
        if budget.files is not None and len(taken) >= budget.files:
            break
        first = i if first is None else first
        if limit is not None and used + sizes[i] > limit:
            plan.too_large += sizes[i] > limit
            continue
        taken.append(i)
        used += sizes[i]
    if not taken and first is not None:
        taken.append(first)
    return taken


def _materialise(
    repo: Repository, snapshots: list[tuple[str, Snapshot]], folders: list[_Folder], places: list[int]
) -> list[Sample]:
    """The chosen files' nodes, from their listings loaded again, in the sample's order."""
    out = []
    for place in places:
        folder = folders[place >> 32]
        listing = repo.load_tree(folder.tree)
        node = listing[place & 0xFFFFFFFF]
        sid, snap = snapshots[folder.snap]
        out.append(Sample(sid, snap, folder.path + b"/" + node.name, node, tuple(listing.repairs_of(node.name))))
    return out
