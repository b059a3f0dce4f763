"""The storage contract every backend implements.

Backends are synchronous and must be safe to call from many threads at once: the backup and
restore pipelines and the trio-based mount (through worker threads) share one instance.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator
from typing import Final, Protocol

# A temporary file older than this (seconds) is surely abandoned: no save takes a day.
STALE_TEMPORARY_AGE: Final = 86400.0


class FileType(enum.Enum):
    """Kinds of repository files; the value is the folder name."""

    CONFIG = "config"
    KEY = "keys"
    DATA = "data"
    INDEX = "index"
    SNAPSHOT = "snapshots"
    LOCK = "locks"
    VERIFY = "verify"  # restore drills' records (design.md 18); folder absent in older repositories


@dataclasses.dataclass(frozen=True, slots=True)
class BackendInfo:
    """What a backend is and can do, declared by it so that callers need not guess from its type.

    - `local`: reads cost what a local disk's do, so a local cache of repository files would only
      double the disk space (local directory, memory).
    - `append_only`: the storage refuses to delete or replace anything but lock files (`backupfs
      serve --append-only`); prune, forget and key removal cannot work through it.
    - `sweeps_temporaries`: writers leave temporary files when killed, and
      `remove_stale_temporaries` finds and deletes them (local, sftp).
    """

    local: bool
    append_only: bool
    sweeps_temporaries: bool


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

    def info(self) -> BackendInfo:
        """The backend's capabilities; a remote one may ask its server (once), and can fail as any call."""

    def remove_stale_temporaries(self, max_age: float = STALE_TEMPORARY_AGE) -> int:
        """Delete temporary files of killed writers older than `max_age` seconds; how many.

        0 when `info().sweeps_temporaries` is False (no temporaries, or none this client can see).
        """

    def close(self) -> None: ...
