"""The storage contract every backend implements.

Backends are synchronous and must be safe to call from many threads at once: the backup and
restore pipelines and the trio-based mount (through worker threads) share one instance.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Protocol


class FileType(enum.Enum):
    """Kinds of repository files; the value is the folder name."""

    CONFIG = "config"
    KEY = "keys"
    DATA = "data"
    INDEX = "index"
    SNAPSHOT = "snapshots"
    LOCK = "locks"


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

    def close(self) -> None: ...
