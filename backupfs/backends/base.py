"""The storage contract every backend implements.

Backends are synchronous and must be safe to call from many threads at once: the backup and
restore pipelines and the trio-based mount (through worker threads) share one instance.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator
from typing import Final, Protocol, runtime_checkable

# A temporary file older than this (seconds) is surely abandoned: no save takes a day.
STALE_TEMPORARY_AGE: Final = 86400.0
# S3 Object Lock's two retention modes, as backupfs names them (S3 spells them in capitals).
RETENTION_MODES: Final = ("compliance", "governance")


class FileType(enum.Enum):
    """Kinds of repository files; the value is the folder name."""

    CONFIG = "config"
    KEY = "keys"
    DATA = "data"
    INDEX = "index"
    SNAPSHOT = "snapshots"
    LOCK = "locks"
    VERIFY = "verify"  # restore drills' records (format.md 14); folder absent in older repositories


@dataclasses.dataclass(frozen=True, slots=True)
class BackendInfo:
    """What a backend is and can do, declared by it so that callers need not guess from its type.

    - `local`: reads cost what a local disk's do, so a local cache of repository files would only
      double the disk space (local directory, memory).
    - `append_only`: the storage refuses to delete or replace anything but lock files (`backupfs
      serve --append-only`); prune, forget and key removal cannot work through it.
    - `sweeps_temporaries`: writers leave temporary files when killed, and
      `remove_stale_temporaries` finds and deletes them (local, sftp).
    - `reads_in_flight`: how many loads at once keep this storage busy. A local disk needs only
      enough to keep the cores decrypting; a remote one enough to cover its latency (restore and
      the mount read ahead with that many).
    """

    local: bool
    append_only: bool
    sweeps_temporaries: bool
    reads_in_flight: int = 4


class Backend(Protocol):
    """Contracts:

    - `save` is atomic: a reader sees either no file or the whole file, never a partial one,
      even if the process dies mid-call. Saving an existing name replaces it (names are content
      hashes, so the content is the same) except for CONFIG, which `init` writes only once.
    - `load` returns exactly `length` bytes from `offset` (the rest of the file when `length` is
      None) or raises NotFound; a short file raises BackendError. It is idempotent and may be
      retried.
    - `list` yields `(name, size)` of every complete file of a type, in no particular order;
      only names layout.py allows, in the folder it puts them: temporary and foreign files
      are never listed.
    - `remove` deletes a file; removing a missing file raises NotFound.
    - `list_foreign` yields the relative paths of files in the layout's folders that are not
      repository files (layout.is_foreign), for `check` to report; nothing else ever sees them.
      A backend that cannot see them (a REST server hides them) yields nothing.
    - Every method raises BackendError for a name no file of its type can have (layout.py),
      before touching any storage.
    - Transient failures raise TransientBackendError; everything else BackendError.
    """

    @property
    def location(self) -> str: ...

    def create(self) -> None:
        """Make the empty repository layout; raise AlreadyExists if a config is present."""

    def exists(self) -> bool:
        """Whether a repository (its config) is present."""

    def save(self, ftype: FileType, name: str, data: bytes | memoryview) -> None: ...

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def stat(self, ftype: FileType, name: str) -> int:
        """Size in bytes, or NotFound."""

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]: ...

    def remove(self, ftype: FileType, name: str) -> None: ...

    def list_foreign(self) -> Iterator[str]: ...

    def info(self) -> BackendInfo:
        """The backend's capabilities; a remote one may ask its server (once), and can fail as any call."""

    def remove_stale_temporaries(self, max_age: float = STALE_TEMPORARY_AGE) -> int:
        """Delete temporary files of killed writers older than `max_age` seconds; how many.

        0 when `info().sweeps_temporaries` is False (no temporaries, or none this client can see).
        """

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionSupport:
    """What the storage says about write-once retention (S3 Object Lock) where the repository is.

    - `enabled`: the storage enforces retention there (S3: the bucket has Object Lock, and thus
      versioning); None when the credentials may not ask.
    - `default_retention`: a retention the storage gives every new object by itself (an S3 bucket's
      default rule), described for a message; backupfs needs lock files it can delete.
    """

    enabled: bool | None
    default_retention: str | None = None


@runtime_checkable
class ObjectLock(Protocol):
    """Storage that can keep files undeletable until a date, even for the holder of its keys.

    Optional beside `Backend`: the s3 backend implements it (and RetryBackend forwards it, saying
    `enabled=False` over any other kind of storage); the memory backend simulates it for unit
    tests. Contracts:

    - `set_retention(mode, seconds)`: from then on every `save` of a file that is not a lock file
      keeps it undeletable for `seconds` after the save, in `mode` (one of RETENTION_MODES; None
      turns it off). The config gets it only once its write has won against a concurrent `init`.
      `create()` then creates a missing bucket with Object Lock enabled.
    - `retention(type, name)`: until when the file is kept (Unix time), None if it has no
      retention; NotFound for a missing file.
    - `extend_retention(type, name, until)`: the file stays undeletable until at least `until`
      (in the mode set, or its own when it has one); a later date already set is kept: a
      retention is never shortened.
    - `remove` of a file under retention raises UnderRetention (with the date when known) and
      changes nothing; otherwise the file and all its stored versions are gone, so the space
      is freed (a plain S3 delete on a versioned bucket would only hide the object).
    - `list` never shows a file that a plain delete has hidden.
    """

    def retention_support(self) -> RetentionSupport: ...

    def set_retention(self, mode: str | None, seconds: float = 0.0) -> None: ...

    def retention(self, ftype: FileType, name: str) -> float | None: ...

    def extend_retention(self, ftype: FileType, name: str, until: float) -> None: ...
