"""Exception hierarchy; each user-facing error carries the exit code documented in architecture.md (exit codes)."""

from __future__ import annotations

import signal
from typing import Final


class BackupfsError(Exception):
    """Base of every error the CLI turns into one line on stderr."""

    exit_code = 1


class UsageError(BackupfsError):
    exit_code = 2


class IntegrityError(BackupfsError):
    """Data failed authentication, hashing or parsing: corrupt, truncated or forged."""

    exit_code = 4


class PackMissing(IntegrityError):
    """A pack the index names is gone. Prune may have deleted or repacked it since the index was
    loaded: a reader that reloads the index may find the blob elsewhere (the mount does)."""

    def __init__(self, message: str, pack: str) -> None:
        super().__init__(message)
        self.pack = pack


class BlobNotIndexed(IntegrityError):
    """No index file lists the blob: the repository lost it, or the reader's index is older than
    the snapshot that names it (a backup running beside a mount)."""

    def __init__(self, message: str, blob_id: bytes) -> None:
        super().__init__(message)
        self.blob_id = blob_id


class RepositoryNotFound(BackupfsError):
    exit_code = 10


class LockError(BackupfsError):
    exit_code = 11


class WrongPassword(BackupfsError):
    exit_code = 12


class LockLost(BackupfsError):
    """The lock went unrefreshed long enough that another process may have judged it stale."""

    exit_code = 13


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread: it unwinds exactly as Ctrl-C does (the lock
    removed, a source command killed, nothing half-saved), so every cleanup written for Ctrl-C
    serves it too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class BackendError(BackupfsError):
    """A storage operation failed; `transient` says whether retrying may help."""

    transient = False


class TransientBackendError(BackendError):
    transient = True


class NotFound(BackendError):
    """The named file does not exist in the backend."""


class AlreadyExists(BackendError):
    """A create-only operation found the target already present."""


class UnderRetention(BackendError):
    """The storage refuses to delete a file whose retention (S3 Object Lock) has not passed.

    `until` is when it becomes deletable (Unix time), when the storage said so. Not an error of the
    repository: prune and forget report such files and leave them for a later run."""

    def __init__(self, message: str, until: float | None = None) -> None:
        super().__init__(message)
        self.until = until


# SIGINT (Ctrl-C), SIGTERM (systemd's stop), SIGHUP (a closed terminal): each ends a command, a
# mount or the server cleanly. The mount and the server receive them in their trio loops.
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The only exception inside nested groups, else the group itself: trio wraps what ended a
    loop (a damaged index file, a port in use) in nursery groups, and a command reports that one
    error on one line, as every other command does."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group
