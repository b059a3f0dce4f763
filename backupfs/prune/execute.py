"""Execute a prune plan in an order where a kill at any instant leaves a consistent repository.

New packs, then an index that supersedes every old index file and lists every kept pack, then old
index files are deleted, then packs. Packs that hold nothing in use are deleted in a first round
before anything is repacked, so a full disk gets space back first (architecture.md "Prune").

A delete the storage refuses because the file's retention has not passed (S3 Object Lock) is
recorded in the plan's `held` and is no error: the order above leaves an old index file refused
superseded, and a pack refused in no index, both as a kill at that moment would (format.md 13).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from backupfs.backends.base import FileType
from backupfs.errors import BackendError, BackupfsError, IntegrityError, NotFound, UnderRetention
from backupfs.format import index as index_fmt
from backupfs.format.pack import PackEntry, read_ranges
from backupfs.prune.plan import Log, PackInfo, PrunePlan, PruneStats
from backupfs.prune.table import REC, REC_SIZE, entries_of
from backupfs.repository.packer import Packer
from backupfs.repository.repo import Repository

__all__ = ["PHASES", "Hook", "execute"]

# The phase boundaries execute() tells its hook about, in order: the crash tests stop prune at
# every one of them.
PHASES = (
    "planned",
    "garbage-deleted",
    "delete:index-partial",
    "delete:index-written",
    "delete:old-index-deleted",
    "delete:pack-deleted",
    "delete:packs-deleted",
    "repack:pack-written",
    "repack:packs-written",
    "repack:index-partial",
    "repack:index-written",
    "repack:old-index-deleted",
    "repack:pack-deleted",
    "repack:packs-deleted",
    "done",
)

_READ_GAP = 1 << 20  # unused bytes a repack reads through rather than making another request

Hook = Callable[[str], None]


def _no_hook(_phase: str) -> None:
    pass


def execute(plan: PrunePlan, *, log: Log = lambda _m: None, hook: Hook = _no_hook) -> PruneStats:
    """Carries out the plan; safe to kill at any point (architecture.md "Prune").

    A storage error (a full disk) stops it with the repository consistent: new packs not yet
    in force are removed again, and running prune later finishes the job. `hook` is called with
    each of PHASES as it is reached: the crash tests stop the process there.
    """
    return _Execution(plan).run(log, hook)


class _Execution:
    def __init__(self, plan: PrunePlan) -> None:
        self.repo = plan.repo
        self.opts = plan.opts
        self.stats = plan.stats
        self._table = plan.table
        self._used = plan.used
        self.keep = plan.keep
        self.delete = plan.delete
        self.repack = plan.repack
        self.unindexed = plan.unindexed
        self.obsolete_index_files = plan.obsolete_index_files
        self.reindexed = plan.reindexed
        self._current_index = list(plan.index_files) + list(plan.obsolete_index_files)
        self.held = plan.held
        self._sizes = {p.id.hex(): p.size for p in (*plan.delete, *plan.repack)}
        self._repacked = {p.id.hex() for p in plan.repack}
        self._held_lock = threading.Lock()

    def run(self, log: Log, hook: Hook) -> PruneStats:
        hook("planned")
        try:
            if self.unindexed:
                # In no index, so no snapshot uses them, and with the exclusive lock no backup runs.
                log(f"deleting {len(self.unindexed)} unindexed packs")
                self._remove(FileType.DATA, self.unindexed, lambda _p: None, "unindexed")
            # Temporary files of writers killed mid-save; prune holds the exclusive lock, and the
            # age limit keeps even a stalled concurrent writer's file safe.
            n = self.repo.remove_stale_temporaries()
            if n:
                log(f"removed {n} abandoned temporary files")
            hook("garbage-deleted")
            # Under Object Lock the index written between the two rounds would be superseded at
            # once and stay, undeletable, for the whole retention: one round does both there
            # (object storage has no full disk to give space back to first).
            one_round = self.repo.retention_on and bool(self.repack)
            if self.delete and not one_round:
                log(f"deleting {len(self.delete)} packs with nothing in use")
                self._commit("delete", self.keep + self.repack, [], [p.id.hex() for p in self.delete], log, hook)
            if self.repack:
                log(f"repacking {len(self.repack)} packs")
                new = self._repack(hook)
                hook("repack:packs-written")
                old = self.repack + self.delete if one_round else self.repack
                self._commit("repack", self.keep, new, [p.id.hex() for p in old], log, hook)
            elif not self.delete and self.reindexed:
                # packs no live index listed hold blobs in use: step 2 with nothing to delete
                # writes the index that lists them again (and supersedes the rest)
                log(f"listing {len(self.reindexed)} packs in the index again")
                self._commit("delete", self.keep, [], [], log, hook)
            elif not self.delete and self.obsolete_index_files:
                self._remove(FileType.INDEX, self.obsolete_index_files, lambda _p: None, "index")
        except BackupfsError as exc:
            raise type(exc)(
                f"prune stopped: {exc}. The repository is consistent and nothing in use was deleted; "
                "run prune again (after making space, if the storage is full)"
            ) from exc
        self.stats.executed = True
        hook("done")
        return self.stats

    def _commit(
        self,
        phase: str,
        keep: list[PackInfo],
        new: list[tuple[bytes, bytes]],
        remove: list[str],
        log: Log,
        hook: Hook,
    ) -> None:
        """One crash-safe step: index of `keep` + `new` superseding all, then old index, then packs."""
        old = self._current_index
        log("writing new index")
        try:
            written = self._write_index(keep, new, old, lambda: hook(f"{phase}:index-partial"))
        except BackupfsError:
            self._discard_packs([pid for pid, _r in new])  # the old index is still in force
            raise
        self._current_index = written
        hook(f"{phase}:index-written")
        self._remove(FileType.INDEX, [n for n in old if n not in written], lambda _p: None, "index")
        hook(f"{phase}:old-index-deleted")
        log(f"deleting {len(remove)} packs")
        self._remove(FileType.DATA, remove, lambda _p: hook(f"{phase}:pack-deleted"), "unused")
        hook(f"{phase}:packs-deleted")

    def _write_index(
        self, keep: list[PackInfo], new: list[tuple[bytes, bytes]], supersedes: list[str], partial: Callable[[], None]
    ) -> list[str]:
        """Index files of at most `index_max_entries` entries; only the last supersedes the old
        ones, so until it exists the old files stay in force (the earlier ones merely repeat them)."""
        table = self._table

        def packs() -> Iterator[tuple[bytes, bytes]]:
            for p in keep:
                yield p.id, bytes(table.recs[p.start * REC_SIZE : (p.start + p.count) * REC_SIZE])
            yield from new

        def save(chunk: list[tuple[bytes, bytes]], sup: list[bytes]) -> str:
            plain = index_fmt.encode_index(((pid, entries_of(recs)) for pid, recs in chunk), sup)
            return self.repo.save_file(FileType.INDEX, plain, index_fmt.AAD)

        written: list[str] = []
        try:
            chunk: list[tuple[bytes, bytes]] = []
            entries = 0
            for pid, recs in packs():
                n = len(recs) // REC_SIZE
                if chunk and entries + n > self.opts.index_max_entries:
                    written.append(save(chunk, []))
                    if len(written) == 1:
                        partial()
                    chunk, entries = [], 0
                chunk.append((pid, recs))
                entries += n
            written.append(save(chunk, [bytes.fromhex(n) for n in supersedes]))
        except BackupfsError:
            for name in written:  # they only repeat what the old files say
                _remove_quietly(self.repo, FileType.INDEX, name)
            raise
        self.stats.index_files_written += len(written)
        return written

    def _remove(self, ftype: FileType, names: list[str], after_first: Callable[[str], None], kind: str) -> None:
        """Deletes files (several at a time: remote backends have latency); gone already is fine,
        and so is a file still under retention: it is recorded in `held` as `kind`."""
        if not names:
            return
        self.repo.check_lock()  # each deleting phase: with the lock lost, a backup may need these

        def rm(name: str) -> None:
            try:
                self.repo.remove_file(ftype, name)
            except NotFound:
                pass
            except UnderRetention as exc:
                self._refused(ftype, name, kind, exc.until)

        rm(names[0])
        after_first(names[0])
        if len(names) > 1:
            with ThreadPoolExecutor(8, thread_name_prefix="bfs-prune-rm") as pool:
                for _ in pool.map(rm, names[1:]):
                    pass

    def _refused(self, ftype: FileType, name: str, kind: str, until: float | None) -> None:
        size = self._sizes.get(name, 0) if ftype is FileType.DATA else 0
        if kind == "unused" and name in self._repacked:
            kind = "repack"
        with self._held_lock:
            self.held.add(kind, size, until)
            s = self.stats
            if kind == "unused":
                s.delete_packs -= 1
                s.delete_bytes -= size
            elif kind == "repack":
                s.repack_bytes -= size
            elif kind == "unindexed":
                s.unindexed_packs -= 1

    def _discard_packs(self, pack_ids: list[bytes]) -> None:
        """Best effort: new packs in no index in force are garbage; give their space back now."""
        for pid in pack_ids:
            _remove_quietly(self.repo, FileType.DATA, pid.hex())

    def _repack(self, hook: Hook) -> list[tuple[bytes, bytes]]:
        """Copies the live blobs of the packs to repack into new packs; returns (pack id, records).

        Envelopes are copied unchanged (they are bound to blob id and type, not to a position),
        after checking that each decrypts and hashes to its id, so prune never spreads damage.
        """
        repo, table, used = self.repo, self._table, self._used
        new: list[tuple[bytes, bytes]] = []
        lock = threading.Lock()

        def upload(name: str, data: bytes, entries: list[PackEntry]) -> None:
            repo.save_pack(name, data)
            recs = b"".join(REC.pack(e.id, e.type, e.offset, e.length, e.raw_length) for e in entries)
            with lock:
                new.append((bytes.fromhex(name), recs))
                first = len(new) == 1
                self.stats.packs_written += 1
                self.stats.bytes_written += len(data)
            if first:
                hook("repack:pack-written")

        packer = Packer(repo.cipher, repo.config.pack_size, upload, uploaders=2, max_in_flight=2)
        try:
            for p in self.repack:
                name = p.id.hex()
                live = sorted(
                    (table.entry(g) for g in range(p.start, p.start + p.count) if used[g]), key=lambda e: e.offset
                )
                # one request per pack, reading through dead blobs (measured: 914 GETs to repack
                # 21 packs, one per run of live blobs; restic ~90)
                for group in read_ranges(live, _span, _READ_GAP):
                    start = group[0].offset
                    end = group[-1].offset + group[-1].length
                    data = repo.load_pack(name, start, end - start)
                    for e in group:
                        envelope = data[e.offset - start : e.offset - start + e.length]
                        plain = repo.open_blob(e.type, e.id, envelope, name, e.raw_length)
                        if len(plain) != e.raw_length or repo.blob_id(plain) != e.id:
                            raise IntegrityError(f"pack {name}: blob {e.id.hex()[:16]} does not hash to its id")
                        packer.add(e.type, e.id, envelope, e.raw_length)
                self.stats.packs_repacked += 1
            packer.flush()
        except BackupfsError:
            packer.close()
            with lock:
                written = [pid for pid, _r in new]
            self._discard_packs(written)
            raise
        finally:
            packer.close()
        return new


def _remove_quietly(repo: Repository, ftype: FileType, name: str) -> None:
    try:
        repo.remove_file(ftype, name)
    except BackendError:
        pass


def _span(e: PackEntry) -> tuple[int, int]:
    return e.offset, e.length
