"""Where a restore drill gets its sample back from (format.md 14): the restore code into a
scratch folder (`RestoreSource`), or a folder already holding the snapshots (`FolderSource`: a
`backupfs mount`). Both hand the drill read-only fds, opened one name at a time."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from backupfs.errors import BackupfsError
from backupfs.ops.dirfds import DIR_FLAGS, open_beneath
from backupfs.ops.drillsample import Sample
from backupfs.ops.restore import Restorer
from backupfs.repository.repo import Repository

SCRATCH_PREFIX = "backupfs-verify-"


class FileSource(Protocol):
    """Where a drill finds the sampled files once they are back."""

    def fetch(self, batch: Sequence[Sample]) -> dict[int, str]:
        """Makes the batch's files readable; returns, by position in the batch, why a file could
        not be (what the restore said)."""

    def open(self, sample: Sample) -> tuple[int, str]:
        """A read-only fd of the file (OSError if it is not there), and its path for --exec."""

    def warnings_of(self, sample: Sample) -> list[str]:
        """What restoring it warned about (xattrs a file system cannot hold)."""

    def release(self) -> None:
        """The batch was checked: what it took (scratch files) can go."""


class RestoreSource:
    """Restores each batch with the restore code into a fresh folder of the scratch folder."""

    def __init__(self, repo: Repository, scratch: str) -> None:
        self._repo = repo
        self._scratch = scratch
        self._run = 0
        self._roots: dict[str, str] = {}
        self._warnings: dict[tuple[str, bytes], list[str]] = {}
        self._opener = Opener()

    def fetch(self, batch: Sequence[Sample]) -> dict[int, str]:
        self._run += 1
        problems: dict[int, str] = {}
        by_snapshot: dict[str, list[int]] = {}
        for i, sample in enumerate(batch):
            by_snapshot.setdefault(sample.sid, []).append(i)
        for sid, positions in by_snapshot.items():
            root = os.path.join(self._scratch, str(self._run), sid[:16])
            self._roots[sid] = root
            tree = batch[positions[0]].snapshot.tree
            stats = Restorer(self._repo, tree, root, only=[batch[i].path for i in positions]).run()
            for i in positions:
                said = self._said(stats.errors, batch[i])
                if said:
                    problems[i] = "; ".join(said)
                self._warnings[(sid, batch[i].path)] = [
                    _without(w, batch[i].path) for w in stats.warnings if _names(w, batch[i].path)
                ]
        return problems

    def _said(self, errors: list[str], sample: Sample) -> list[str]:
        """What the restore said about the file; for a file it did not make, also what it said
        about the folders on its way (an unreadable listing, a folder it lost)."""
        said = [_without(e, sample.path) for e in errors if _names(e, sample.path)]
        if said:
            return said
        try:
            os.close(self.open(sample)[0])
        except OSError:
            return [e for e in errors if _on_way(e, sample.path)]
        return []

    def open(self, sample: Sample) -> tuple[int, str]:
        root = self._roots[sample.sid]
        return self._opener.open(root, sample.path), root + os.fsdecode(sample.path)

    def warnings_of(self, sample: Sample) -> list[str]:
        return self._warnings.get((sample.sid, sample.path), [])

    def release(self) -> None:
        self._opener.close()
        remove_tree(os.path.join(self._scratch, str(self._run)))
        self._roots.clear()
        self._warnings.clear()


class FolderSource:
    """Files that are already there, below one folder per snapshot (a `backupfs mount`'s)."""

    def __init__(self, root_of: Callable[[str], str]) -> None:
        self._root_of = root_of
        self._opener = Opener()

    def fetch(self, batch: Sequence[Sample]) -> dict[int, str]:
        return {}

    def open(self, sample: Sample) -> tuple[int, str]:
        root = self._root_of(sample.sid)
        return self._opener.open(root, sample.path), root + os.fsdecode(sample.path)

    def warnings_of(self, sample: Sample) -> list[str]:
        return []

    def release(self) -> None:
        self._opener.close()


def _names(message: str, path: bytes) -> bool:
    """Whether a restore message is about `path` (it starts with it)."""
    return message.startswith(os.fsdecode(path) + ": ")


def _on_way(message: str, path: bytes) -> bool:
    """Whether a restore message is about a folder on the way to `path`."""
    text = os.fsdecode(path).rpartition("/")[0]
    while text:
        if message.startswith(text + ": "):
            return True
        text = text.rpartition("/")[0]
    return message.startswith("/: ")


def _without(message: str, path: bytes) -> str:
    """A restore message about `path` without the path it starts with (a drill names it anyway)."""
    return message.removeprefix(os.fsdecode(path) + ": ")


class Opener:
    """Opens `path` (from a snapshot's root) below a folder one name at a time, so that no symlink
    is followed and no path is longer than a name (deep folders pass PATH_MAX). The last folder
    stays open: files come in path order, and each folder opened through a mount costs two
    requests (the drill of `verify._batches`: 39 -> 18-27 s, CPU 11 -> 6 s)."""

    def __init__(self) -> None:
        self._folder: tuple[str, bytes] | None = None
        self._fd = -1

    def open(self, root: str, path: bytes) -> int:
        folder, _slash, name = path.rpartition(b"/")
        if self._folder != (root, folder):
            self.close()
            root_fd = os.open(root, DIR_FLAGS)
            try:
                self._fd = open_beneath(root_fd, folder.split(b"/")[1:])
            finally:
                os.close(root_fd)
            self._folder = (root, folder)
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._folder = -1, None


@contextlib.contextmanager
def scratch_folder(parent: str | None) -> Iterator[str]:
    """A private folder for a drill's restores, removed afterwards whatever happens."""
    try:
        if parent is not None:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        path = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=parent)
    except OSError as exc:
        raise DrillError(f"cannot make a scratch folder in {parent or tempfile.gettempdir()}: {exc.strerror}") from exc
    try:
        yield path
    finally:
        remove_tree(path)


def remove_tree(path: str) -> None:
    """Removes a restored tree, also folders restored read-only (0o500) as another user would
    need them opened first."""

    def opened(func: Callable[..., object], target: str, _exc: BaseException) -> None:
        parent = os.path.dirname(target)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
        func(target)

    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=opened)
    else:
        shutil.rmtree(path, onerror=lambda f, p, e: opened(f, p, e[1]))


class DrillError(BackupfsError):
    """A drill could not run at all (no scratch folder, no mount)."""
