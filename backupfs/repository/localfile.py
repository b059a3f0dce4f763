"""Local files the repository keeps beside it (the caches): each written whole or not at all.

One writer's temporary is never another's: the name has the process, the thread and random
bytes, and it is created exclusively. Two threads of one process (the mount's, a backup's
uploaders) may store the same cache file at once; with a name per process they shared one
temporary, and one could move the other's half-written file into place.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from typing import Final

TEMP_MARK: Final = ".tmp-"  # in every temporary's name: sweepers leave such files alone
_UNIQUE_BYTES: Final = 4


def temporary_path(path: str) -> str:
    return f"{path}{TEMP_MARK}{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(_UNIQUE_BYTES)}"


def write_atomic(path: str, data: bytes, *, mode: int = 0o600, best_effort: bool = True) -> None:
    """Replaces `path` with `data` (its folder made if missing). `best_effort`: an OSError (a full
    disk, a read-only home) leaves the old file and is swallowed, since a cache that cannot be
    written must not fail the command; otherwise it is raised."""
    tmp = temporary_path(path)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if not best_effort:
            raise
