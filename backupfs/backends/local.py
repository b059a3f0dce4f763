"""A repository in a local directory: the embedded default."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator

from backupfs.backends import layout
from backupfs.backends.base import STALE_TEMPORARY_AGE, BackendInfo, FileType
from backupfs.errors import AlreadyExists, BackendError, NotFound

_DIR_MODE = 0o700
_INFO = BackendInfo(local=True, append_only=False, sweeps_temporaries=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _oserror(exc: OSError, what: str) -> BackendError:
    if exc.errno == errno.ENOSPC:
        return BackendError(f"{what}: no space left on device")
    if exc.errno == errno.EDQUOT:
        return BackendError(f"{what}: disk quota exceeded")
    return BackendError(f"{what}: {exc.strerror or exc}")


class LocalBackend:
    """Files under `root`, data packs fanned out into 256 sub-folders like restic."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    @property
    def location(self) -> str:
        return self.root

    def _path(self, ftype: FileType, name: str) -> str:
        return os.path.join(self.root, layout.path(ftype, name))

    def exists(self) -> bool:
        """A folder this user may not read is not "no repository": say why it cannot be opened."""
        try:
            os.stat(os.path.join(self.root, layout.CONFIG_NAME))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except PermissionError as exc:
            raise BackendError(
                f"cannot open the repository at {self.root}: permission denied "
                "(run as the user that owns it, or give this user access)"
            ) from exc
        except OSError as exc:
            raise _oserror(exc, f"cannot open the repository at {self.root}") from exc
        return True

    def create(self) -> None:
        if self.exists():
            raise AlreadyExists(f"a repository already exists at {self.root}")
        try:
            # Owner-only, like the files: other local users need not even see the names and sizes.
            os.makedirs(self.root, _DIR_MODE, exist_ok=True)
            for rel in layout.directories():
                os.makedirs(os.path.join(self.root, rel), _DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise _oserror(exc, f"cannot create repository at {self.root}") from exc

    def save(self, ftype: FileType, name: str, data: bytes | memoryview) -> None:
        path = self._path(ftype, name)
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, layout.temporary_name(name))
        try:
            os.makedirs(directory, _DIR_MODE, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if ftype is FileType.CONFIG:
                os.link(tmp, path)  # never replace an existing config
                os.unlink(tmp)
            else:
                os.replace(tmp, path)
            _fsync_dir(directory)
        except FileExistsError as exc:
            _unlink_quiet(tmp)
            raise AlreadyExists(f"{path} already exists") from exc
        except OSError as exc:
            _unlink_quiet(tmp)
            raise _oserror(exc, f"cannot write {path}") from exc

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(ftype, name)
        try:
            # plain fds: a ranged read per blob is the restore's and the mount's hot path, and a
            # Python file object per call cost more than the read itself for small blobs
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if length is None:
                    size = os.fstat(fd).st_size
                    data = os.pread(fd, max(0, size - offset), offset)
                    return data
                data = os.pread(fd, length, offset)
            finally:
                os.close(fd)
        except FileNotFoundError as exc:
            raise NotFound(f"{ftype.value}/{name} not found") from exc
        except OSError as exc:
            raise _oserror(exc, f"cannot read {path}") from exc
        if len(data) != length:
            raise BackendError(f"{path}: short read ({len(data)} of {length} bytes at {offset})")
        return data

    def stat(self, ftype: FileType, name: str) -> int:
        try:
            return os.stat(self._path(ftype, name)).st_size
        except FileNotFoundError as exc:
            raise NotFound(f"{ftype.value}/{name} not found") from exc
        except OSError as exc:
            raise _oserror(exc, f"cannot stat {name}") from exc

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        if ftype is FileType.CONFIG:
            if self.exists():
                yield layout.CONFIG_NAME, self.stat(ftype, layout.CONFIG_NAME)
            return
        dirs = [ftype.value]
        if ftype is FileType.DATA:
            try:
                with os.scandir(os.path.join(self.root, ftype.value)) as found:
                    dirs = [f"{ftype.value}/{e.name}" for e in found if e.is_dir()]
            except FileNotFoundError:
                return
        for d in dirs:
            try:
                with os.scandir(os.path.join(self.root, d)) as found:
                    entries = list(found)
            except FileNotFoundError:
                continue
            for entry in entries:
                if not layout.belongs(ftype, d, entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    yield entry.name, entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue

    def list_foreign(self) -> Iterator[str]:
        try:
            with os.scandir(os.path.join(self.root, FileType.DATA.value)) as found:
                subs = [e.name for e in found if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            subs = []
        for rel in layout.foreign_folders(subs):
            try:
                with os.scandir(os.path.join(self.root, rel)) as found:
                    entries = [e for e in found if not e.is_dir(follow_symlinks=False)]
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise _oserror(exc, f"cannot list {rel or self.root}") from exc
            for e in entries:
                if layout.is_foreign(rel, e.name):
                    yield f"{rel}/{e.name}" if rel else e.name

    def remove(self, ftype: FileType, name: str) -> None:
        path = self._path(ftype, name)
        try:
            os.unlink(path)
        except FileNotFoundError as exc:
            raise NotFound(f"{ftype.value}/{name} not found") from exc
        except OSError as exc:
            raise _oserror(exc, f"cannot remove {path}") from exc

    def info(self) -> BackendInfo:
        return _INFO

    def remove_stale_temporaries(self, max_age: float = STALE_TEMPORARY_AGE) -> int:
        """Delete temporary files a killed writer left behind, once they are surely abandoned."""
        removed = 0
        now = time.time()
        for rel in ["", *layout.directories()]:
            try:
                with os.scandir(os.path.join(self.root, rel)) as found:
                    stale = [e.path for e in found if layout.is_temporary(e.name)]
            except OSError:
                continue
            for path in stale:
                try:
                    if now - os.stat(path, follow_symlinks=False).st_mtime > max_age:
                        os.unlink(path)
                        removed += 1
                except OSError:
                    pass
        return removed

    def close(self) -> None:
        pass


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
