"""Verify records: the result of one restore drill (format.md section 14)."""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from backupfs.errors import IntegrityError
from backupfs.format._msgpack import field, is_int, pack, unpack_map

AAD: Final = b"bfs1V"
VERSION: Final = 1
RESTORE, MOUNT = "restore", "mount"  # how the drill read the files back
MAX_PROBLEMS: Final = 100  # failure lines kept in a record
ID_SIZE: Final = 32


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotTally:
    """What a drill verified of one snapshot."""

    snapshot: bytes
    files: int
    nbytes: int
    failed: int


@dataclasses.dataclass(slots=True)
class VerifyRecord:
    start_ns: int
    end_ns: int
    host: str
    user: str
    program: str
    method: str
    seed: int
    ok: bool
    files: int
    nbytes: int
    failed: int
    snapshots: list[SnapshotTally] = dataclasses.field(default_factory=list)
    packs: list[bytes] = dataclasses.field(default_factory=list)
    # one line each; UTF-8 text, but a stored name in it keeps its exact bytes (it may not be UTF-8)
    problems: list[bytes] = dataclasses.field(default_factory=list)

    def encode(self) -> bytes:
        return pack(
            {
                "v": VERSION,
                "start": self.start_ns,
                "end": self.end_ns,
                "host": self.host,
                "user": self.user,
                "program": self.program,
                "method": self.method,
                "seed": self.seed,
                "ok": self.ok,
                "files": self.files,
                "bytes": self.nbytes,
                "failed": self.failed,
                "snapshots": [[t.snapshot, t.files, t.nbytes, t.failed] for t in self.snapshots],
                "packs": self.packs,
                "problems": self.problems[:MAX_PROBLEMS],
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> VerifyRecord:
        what = "verify record"
        obj = unpack_map(data, what)
        if obj.get("v") != VERSION:
            raise IntegrityError(f"{what}: unknown version {obj.get('v')!r}")
        ints = {key: field(obj, key, int, what) for key in ("start", "end", "seed", "files", "bytes", "failed")}
        tallies = []
        for item in field(obj, "snapshots", list, what):
            if (
                not isinstance(item, list)
                or len(item) != 4
                or not _is_id(item[0])
                or not all(is_int(v) and v >= 0 for v in item[1:])
            ):
                raise IntegrityError(f"{what}: malformed snapshot entry")
            tallies.append(SnapshotTally(item[0], item[1], item[2], item[3]))
        packs = field(obj, "packs", list, what)
        if not all(_is_id(p) for p in packs):
            raise IntegrityError(f"{what}: malformed pack id")
        problems = field(obj, "problems", list, what)
        if not all(isinstance(p, bytes) for p in problems):
            raise IntegrityError(f"{what}: malformed problems")
        return cls(
            start_ns=ints["start"],
            end_ns=ints["end"],
            host=field(obj, "host", str, what),
            user=field(obj, "user", str, what),
            program=field(obj, "program", str, what),
            method=field(obj, "method", str, what),
            seed=ints["seed"],
            ok=field(obj, "ok", bool, what),
            files=ints["files"],
            nbytes=ints["bytes"],
            failed=ints["failed"],
            snapshots=tallies,
            packs=packs,
            problems=problems,
        )


def _is_id(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == ID_SIZE
