"""Restore drills (`backupfs verify`, format.md 14): restore a sample, check what came back.

A drill proves what a person restoring a file gets, not only that stored blobs decrypt: each
sampled file is restored by the restore code itself (`Restorer`, into a scratch folder, a batch
at a time) or read through a `backupfs mount` (the caller mounts; ops/drillsource.py), then read
back from the file system and checked against its node: the whole-file hash `fh` (or, without
one, each chunk against its id), the size and the metadata restore sets. Nothing here trusts the
restore: a bug in it, a damaged chunk or a forged tree shows up as a file that differs.

Optionally each file is also compared with the live source where that is unchanged since the
backup (same size and mtime), and a command is run on it (`--exec`).
"""

from __future__ import annotations

import dataclasses
import errno
import getpass
import os
import shlex
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence

from backupfs import __version__
from backupfs.crypto import ContentHasher
from backupfs.format.pack import DATA
from backupfs.format.tree import clamp_id
from backupfs.format.verifyrecord import RESTORE, SnapshotTally, VerifyRecord
from backupfs.ops.drillsample import Plan, Sample
from backupfs.ops.drillsource import FileSource, Opener
from backupfs.repository.repo import Repository

BATCH_BYTES = 64 << 20  # restored, checked and removed together: bounds the scratch folder's size
BATCH_FILES = 2048  # each batch is a restore of its own: 2,000 small files took 4.0-4.5 s in 256s, 2.5-3.3 s in one
READ_PIECE = 1 << 20
EXEC_OUTPUT_CHARS = 200  # of a failing --exec command's output, in its failure line
_clock = time.monotonic  # --max-duration's clock (a test moves it on instead of sleeping)


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    sid: str
    path: bytes
    what: str

    def text(self) -> str:
        """Names as stored (surrogate-escaped): whoever shows it escapes it."""
        return f"snapshot {self.sid[:8]}: {os.fsdecode(self.path)}: {self.what}"


@dataclasses.dataclass
class DrillOptions:
    method: str = RESTORE
    scratch: str | None = None  # the folder to make the scratch folder in (restore method)
    max_duration: float | None = None  # seconds
    compare_source: bool = False
    exec_command: str | None = None  # `{}` is the file's path
    host: str = dataclasses.field(default_factory=socket.gethostname)  # whose sources are live here


@dataclasses.dataclass
class DrillProgress:
    files: int
    nbytes: int
    planned_files: int
    planned_bytes: int
    elapsed: float
    path: bytes
    failed: int = 0  # files found wrong so far (a progress line shows them as errors)


@dataclasses.dataclass
class DrillResult:
    seed: int
    method: str
    start_ns: int
    end_ns: int = 0
    files: int = 0  # verified and passed
    nbytes: int = 0
    failures: list[Failure] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    stopped_early: bool = False  # --max-duration
    unchecked: int = 0  # sampled files left when it stopped
    chunk_checked: int = 0  # files without `fh`, checked chunk by chunk
    sources_compared: int = 0
    sources_changed: int = 0  # not compared: changed since the backup, or gone
    commands_run: int = 0
    tallies: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # sid -> [files, bytes, failed]
    packs: set[bytes] = dataclasses.field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.failures

    def record(self) -> VerifyRecord:
        return VerifyRecord(
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            host=socket.gethostname(),
            user=getpass.getuser(),
            program=f"backupfs {__version__}",
            method=self.method,
            seed=self.seed,
            ok=self.ok,
            files=self.files,
            nbytes=self.nbytes,
            failed=len(self.failures),
            snapshots=[SnapshotTally(bytes.fromhex(sid), *t) for sid, t in sorted(self.tallies.items())],
            packs=sorted(self.packs),
            problems=[f.text().encode("utf-8", "surrogateescape") for f in self.failures],
        )


class Drill:
    """Checks a plan's samples, a batch at a time, against what a `FileSource` gives back."""

    def __init__(
        self,
        repo: Repository,
        options: DrillOptions,
        progress: Callable[[DrillProgress], None] | None = None,
    ) -> None:
        self.repo = repo
        self.opts = options
        self._progress = progress
        self._key = repo.master.file_hash_key()
        self._owners = options.method != RESTORE or os.geteuid() == 0  # restore sets owners as root only
        self._sources = Opener()  # the live files, for --compare-source

    def run(self, plan: Plan, source: FileSource) -> DrillResult:
        result = DrillResult(plan.seed, self.opts.method, time.time_ns())
        start = _clock()
        deadline = start + self.opts.max_duration if self.opts.max_duration is not None else None
        for sid, path, what in plan.problems:
            result.failures.append(Failure(sid, path, what))
            result.tallies.setdefault(sid, [0, 0, 0])[2] += 1
        planned_bytes = plan.planned_bytes
        done = 0
        try:
            for batch in _batches(plan.samples):
                if deadline is not None and done and _clock() >= deadline:
                    result.stopped_early = True
                    result.unchecked = len(plan.samples) - done
                    break
                try:
                    problems = source.fetch(batch)
                    for i, sample in enumerate(batch):
                        self._check(sample, source, problems.get(i), result, deadline)
                        done += 1
                        if self._progress is not None:
                            elapsed = _clock() - start
                            self._progress(
                                DrillProgress(
                                    done,
                                    result.nbytes,
                                    len(plan.samples),
                                    planned_bytes,
                                    elapsed,
                                    sample.path,
                                    len(result.failures),
                                )
                            )
                finally:
                    source.release()
        finally:
            self._sources.close()
        result.packs |= plan.tree_packs
        result.end_ns = time.time_ns()
        return result

    # ---------------------------------------------------------------- one file

    def _check(self, sample: Sample, source: FileSource, restore_problem: str | None, result: DrillResult,
               deadline: float | None) -> None:  # fmt: skip
        tally = result.tallies.setdefault(sample.sid, [0, 0, 0])
        what = self._differences(sample, source, restore_problem, result, deadline)
        if what:
            result.failures.append(Failure(sample.sid, sample.path, "; ".join(what)))
            tally[2] += 1
            return
        result.files += 1
        result.nbytes += sample.node.size
        tally[0] += 1
        tally[1] += sample.node.size
        for _off, bid in sample.node.content or ():
            loc = self.repo.index.lookup(bid)
            if loc is not None:
                result.packs.add(loc.pack_id)

    def _differences(
        self, sample: Sample, source: FileSource, restore_problem: str | None, result: DrillResult,
        deadline: float | None,
    ) -> list[str]:  # fmt: skip
        """What is wrong with the file as it came back; nothing when it is the file backed up."""
        node = sample.node
        stored = [*sample.repairs, *([f"cannot be read: {node.defect}"] if node.defect else [])]
        if stored and restore_problem is None:  # the restore refuses such an entry and says so; a mount shows it
            return [f"its entry in the snapshot is damaged: {'; '.join(stored)}"]
        try:
            fd, shown_path = source.open(sample)
        except OSError as exc:
            why = restore_problem or f"it cannot be opened: {exc.strerror or exc}"
            return [why if why.startswith("not restored") else f"not restored: {why}"]
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return ["it came back as something other than a regular file"]
            what = self._metadata(sample, st, fd, source.warnings_of(sample), result)
            if node.file_hash is not None:
                digest, content_problem = self._hash(fd), None
                if digest != node.file_hash:
                    content_problem = "its content differs from the file backed up (whole-file hash)"
            else:
                result.chunk_checked += 1
                digest, content_problem = self._chunks(fd, sample)
            if content_problem is not None:
                what.append(content_problem)
            if restore_problem is not None:  # restored, but the restore said something
                what.append(f"the restore reported: {restore_problem}")
            if self.opts.compare_source and sample.snapshot.host == self.opts.host:
                what += self._compare_source(sample, node.file_hash or digest, result)
            if self.opts.exec_command is not None:
                what += self._exec(shown_path, result, deadline)
            return what
        except OSError as exc:
            return [f"it cannot be read back: {exc.strerror or exc}"]
        finally:
            os.close(fd)

    def _metadata(
        self, sample: Sample, st: os.stat_result, fd: int, warned: list[str], result: DrillResult
    ) -> list[str]:
        node = sample.node
        what = []
        if st.st_size != node.size:
            what.append(f"its size is {st.st_size}, the backup says {node.size}")
        if stat.S_IMODE(st.st_mode) != node.mode & 0o7777:
            what.append(f"its mode is {stat.S_IMODE(st.st_mode):o}, the backup says {node.mode & 0o7777:o}")
        if st.st_mtime_ns != node.mtime_ns:
            what.append(f"its mtime is {st.st_mtime_ns} ns, the backup says {node.mtime_ns}")
        if self._owners and (st.st_uid, st.st_gid) != (clamp_id(node.uid), clamp_id(node.gid)):
            what.append(f"its owner is {st.st_uid}:{st.st_gid}, the backup says {node.uid}:{node.gid}")
        for name, value in node.xattrs or ():
            if name.startswith(b"system.") or warned:
                continue  # ACLs depend on the file system and mount options; the restore warned
            try:
                got = os.getxattr(fd, name)
            except OSError as exc:
                missing = exc.errno == errno.ENODATA
                what.append(f"its extended attribute {os.fsdecode(name)} {'is missing' if missing else exc.strerror}")
                continue
            if got != value:
                what.append(f"its extended attribute {os.fsdecode(name)} differs")
        result.warnings += [f"snapshot {sample.sid[:8]}: {w}" for w in warned]
        return what

    def _hash(self, fd: int) -> bytes:
        hasher = ContentHasher(self._key)
        pos = 0
        while piece := os.pread(fd, READ_PIECE, pos):
            hasher.update(piece)
            pos += len(piece)
        return hasher.digest()

    def _chunks(self, fd: int, sample: Sample) -> tuple[bytes, str | None]:
        """A file without `fh` (backed up before it existed, or copied): each chunk's bytes
        against its id, the bytes between chunks zero, nothing past the size. Returns the whole
        content's hash too (for --compare-source) and the first difference."""
        node = sample.node
        hasher = ContentHasher(self._key)
        content = node.content or []
        ends = [*(off for off, _bid in content[1:]), node.size]
        problem = None
        for (off, bid), end in zip(content, ends, strict=True):
            if not _zeros(fd, hasher, off) and problem is None:
                problem = f"bytes before offset {off} should be a hole (zeros)"
            raw = self.repo.index.raw_length(bid)
            if raw is None:
                return hasher.digest(), f"its chunk at offset {off} is not in the index"
            if raw > self.repo.max_blob_size(DATA):  # the index says so; a restore would refuse it
                return hasher.digest(), f"its chunk at offset {off} is larger than this repository allows"
            data = os.pread(fd, min(raw, end - off), off)
            hasher.update(data)
            if problem is None and raw > end - off:
                problem = f"its chunk at offset {off} runs into the next one"
            elif problem is None and (len(data) != raw or self.repo.blob_id(data) != bid):
                problem = f"its content differs from the file backed up (the chunk at offset {off})"
        if not _zeros(fd, hasher, node.size) and problem is None:
            problem = "its last bytes should be a hole (zeros)"
        if os.pread(fd, 1, node.size) and problem is None:
            problem = f"it is longer than the {node.size} bytes backed up"
        return hasher.digest(), problem

    def _compare_source(self, sample: Sample, digest: bytes, result: DrillResult) -> list[str]:
        """The live file, where it has the size and mtime it had at the backup."""
        try:
            fd = self._sources.open("/", sample.path)
        except OSError:  # gone, or a folder on its way is not one any more
            result.sources_changed += 1
            return []
        try:
            st = os.fstat(fd)
            node = sample.node
            if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (node.size, node.mtime_ns):
                result.sources_changed += 1
                return []
            result.sources_compared += 1
            if self._hash(fd) != digest:
                return ["the live source differs from the backup although its size and mtime are unchanged"]
            return []
        finally:
            os.close(fd)

    def _exec(self, path: str, result: DrillResult, deadline: float | None) -> list[str]:
        assert self.opts.exec_command is not None
        command = self.opts.exec_command.replace("{}", shlex.quote(path))
        timeout = max(1.0, deadline - _clock()) if deadline is not None else None
        result.commands_run += 1
        try:
            proc = subprocess.run(command, shell=True, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return ["--exec did not finish within --max-duration"]
        if proc.returncode == 0:
            return []
        said = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        tail = said[-1][:EXEC_OUTPUT_CHARS] if said else "no output"
        return [f"--exec exited with {proc.returncode}: {tail}"]


# --------------------------------------------------------------------------- helpers


def _batches(samples: Sequence[Sample]) -> Iterator[list[Sample]]:
    """The sample in its order, cut into batches; each batch in path order, which is listing
    order within a folder: a mount prefetches the next files of a folder read that way (3,000
    small files and one of 512 MiB through a mount, on a loaded machine: 55 s in draw order, 39 s
    in path order)."""
    batch: list[Sample] = []
    size = 0
    for sample in samples:
        if batch and (len(batch) >= BATCH_FILES or size + sample.node.size > BATCH_BYTES):
            yield sorted(batch, key=_place)
            batch, size = [], 0
        batch.append(sample)
        size += sample.node.size
    if batch:
        yield sorted(batch, key=_place)


def _place(sample: Sample) -> tuple[str, bytes]:
    return sample.sid, sample.path


def _zeros(fd: int, hasher: ContentHasher, upto: int) -> bool:
    """Reads from where `hasher` is up to `upto`; whether every byte was zero."""
    ok = True
    while hasher.size < upto:
        piece = os.pread(fd, min(READ_PIECE, upto - hasher.size), hasher.size)
        if not piece:
            hasher.zeros_to(upto)
            return False
        ok = ok and piece.count(0) == len(piece)
        hasher.update(piece)
    return ok
