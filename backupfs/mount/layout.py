"""The layout's own folders, and the snapshot set they show::

    latest -> snapshots/<newest>
    snapshots/<local time>/           each snapshot's root folder (see `trees`)
    ids/<short id>/                   the same trees by id
    hosts/<host>/<time>/, hosts/<host>/latest
    tags/<tag>/<time>/,   tags/<tag>/latest
    versions/                         (see `versions`)

The snapshot set is polled, and replaced as a whole (a new `Model`) when it changed; the kernel is
then told to drop the names it may have cached that went away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from backupfs.format.snapshot import Snapshot
from backupfs.format.tree import DIR, Node, clamp_id
from backupfs.mount.inodes import (
    HOSTS_INO,
    IDS_INO,
    LAST_FIXED_INO,
    ROOT_INO,
    SNAPSHOTS_INO,
    TAGS_INO,
    GroupDir,
    Inode,
    InodeTable,
    LatestLink,
    LayoutDir,
    TreeDir,
)
from backupfs.mount.keys import child_key, hash_ino, latest_key, snapshot_key
from backupfs.mount.model import Model, Snap
from backupfs.mount.storage import Storage

log = logging.getLogger(__name__)

SNAPSHOT_ROOT_MODE = 0o755  # a snapshot's root folder: the stored tree has no entry for "/" itself


class Layout:
    """`model` is the current snapshot set; `ready` is set once the first one has loaded."""

    def __init__(self, table: InodeTable, storage: Storage, invalidate: Callable[[int, bytes], None] | None) -> None:
        self._table = table
        self._storage = storage
        self._invalidate = invalidate  # tells the kernel an entry it may cache has changed
        self.model = Model.build({})
        self.ready = trio.Event()
        self._snapshots: dict[str, Snapshot] = {}
        self._refresh_lock = trio.Lock()

    # ------------------------------------------------------------------ the snapshot set

    async def load(self) -> None:
        t = time.monotonic()
        await self.refresh(initial=True)
        self.ready.set()
        log.info("%d snapshots loaded in %.3f s", len(self.model.snaps), time.monotonic() - t)

    async def refresh(self, *, initial: bool = False) -> bool:
        """Picks up snapshots made or forgotten since the last call; True if anything changed.

        Costs one listing of the snapshot folder when nothing changed. Later snapshots become
        visible only once the index files written before them are loaded. (At start-up the
        index loads concurrently; a blob it misses makes the loading thread reload it.)
        """
        async with self._refresh_lock:
            return await self._refresh(initial)

    async def _refresh(self, initial: bool) -> bool:
        names = await self._storage.snapshot_ids()
        known = set(self._snapshots)
        if names == known:
            return False
        added = sorted(names - known)
        loaded = await self._storage.load_snapshots(added)
        if loaded and not initial:
            await self._storage.update_index()
        old = self.model
        snapshots = {sid: snap for sid, snap in self._snapshots.items() if sid in names}
        snapshots.update(loaded)
        self._snapshots = snapshots
        self.model = Model.build(snapshots, old)
        if not initial:  # the kernel has cached nothing yet (and may not even be connected)
            self._notify_changes(old, self.model)
        return True

    def _notify_changes(self, old: Model, new: Model) -> None:
        """Drops kernel-cached names that went away or changed target (timeouts would anyway)."""
        if self._invalidate is None:
            return
        current = {s.sid for s in new.snaps}
        gone = [s for s in old.snaps if s.sid not in current]
        gone_ids = {s.sid for s in gone}
        inval: list[tuple[int, bytes]] = [(ROOT_INO, b"latest")]
        inval += [(SNAPSHOTS_INO, s.name) for s in gone]
        inval += [(IDS_INO, short) for short, s in old.by_short.items() if s.sid in gone_ids]
        for is_tag, parent, groups in ((False, HOSTS_INO, old.hosts), (True, TAGS_INO, old.tags)):
            for gname, members in groups.items():
                if not new.group(is_tag, gname):
                    inval.append((parent, gname))
                gino = hash_ino(child_key(parent, gname))[0]
                inval.append((gino, b"latest"))
                inval += [(gino, s.name) for s in members if s.sid in gone_ids]
        for parent, name in inval:
            self._invalidate(parent, name)

    # ------------------------------------------------------------------ the folders

    def children(self, rec: LayoutDir | GroupDir) -> list[tuple[bytes, Inode]]:
        """The entries of one of the layout's folders, made fresh from the current snapshot set."""
        model = self.model
        ino = rec.ino
        out: list[tuple[bytes, Inode]] = []
        if isinstance(rec, GroupDir):
            members = model.group(rec.is_tag, rec.name)
            out = [(s.name, self._snap_root(ino, s.name, s)) for s in members]
            if members:
                out.append(self._latest(ino, members[-1].name))
        elif ino == ROOT_INO:
            fixed = [self._table.get(i) for i in range(ROOT_INO + 1, LAST_FIXED_INO + 1)]
            out = [(r.name, r) for r in fixed]
            if model.snaps:
                out.append(self._latest(ino, b"snapshots/" + model.snaps[-1].name))
        elif ino == SNAPSHOTS_INO:
            out = [(s.name, self._snap_root(ino, s.name, s)) for s in model.snaps]
        elif ino == IDS_INO:
            out = [(short, self._snap_root(ino, short, s)) for short, s in model.by_short.items()]
        elif ino in (HOSTS_INO, TAGS_INO):
            groups = model.tags if ino == TAGS_INO else model.hosts
            out = [(g, self._group(ino, g)) for g in groups]
        return out

    def child(self, rec: LayoutDir | GroupDir, name: bytes) -> Inode | None:
        model = self.model
        ino = rec.ino
        if ino == ROOT_INO or (isinstance(rec, GroupDir) and name == b"latest"):
            return next((r for n, r in self.children(rec) if n == name), None)
        s: Snap | None = None
        if isinstance(rec, GroupDir):
            s = model.by_name.get(name)
            if s is not None and s not in model.group(rec.is_tag, rec.name):
                s = None
        elif ino == SNAPSHOTS_INO:
            s = model.by_name.get(name)
        elif ino == IDS_INO:
            s = model.by_short.get(name)
        elif ino in (HOSTS_INO, TAGS_INO):
            return self._group(ino, name) if model.group(ino == TAGS_INO, name) else None
        return None if s is None else self._snap_root(ino, name, s)

    def _group(self, parent: int, name: bytes) -> Inode:
        ino, check, live = self._table.slot(child_key(parent, name))
        return live or GroupDir(ino, check, parent, name, parent == TAGS_INO)

    def _latest(self, parent: int, target: bytes) -> tuple[bytes, Inode]:
        ino, check, live = self._table.slot(latest_key(parent, target))
        return b"latest", live or LatestLink(ino, check, parent, b"latest", target)

    def _snap_root(self, parent: int, name: bytes, s: Snap) -> Inode:
        ino, check, live = self._table.slot(snapshot_key(parent, name, s.sid))
        if live is not None:
            return live
        return TreeDir(ino, check, parent, name, snapshot_root(name, s.snap), ino)


def snapshot_root(name: bytes, snap: Snapshot) -> Node:
    """A snapshot's root folder as an entry: the stored tree has none for "/" itself, so it
    takes the snapshot's owner and time."""
    return Node(
        name=name,
        type=DIR,
        mode=SNAPSHOT_ROOT_MODE,
        uid=clamp_id(snap.uid),  # a snapshot's ids are not checked when it is read
        gid=clamp_id(snap.gid),
        mtime_ns=snap.time_ns,
        atime_ns=snap.time_ns,
        ctime_ns=snap.time_ns,
        subtree=snap.tree,
    )
