"""Directory fds for walks of real folders of any depth: backup reads through them, restore writes.

Everything in a folder is reached relative to an fd of that folder (`openat` and its kin), never
by path: a path longer than PATH_MAX (4096 bytes: ~2,000 levels of short names) cannot be used at
all, and a path's components could be swapped for symlinks while the walk runs. One fd per level
would run out of descriptors (the soft limit is often 1,024) long before a file system runs out of
depth, so `DirChain` keeps only the deepest MAX_OPEN_DIRS levels open, and the root. Going back up
to a closed level reopens it through `..` of the level below (or, failing that, name by name from
the nearest open level), and checks that it is the very folder it was (device and inode): one
that was moved or replaced meanwhile is an error, never a different folder walked unnoticed.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Sequence

MAX_OPEN_DIRS = 32  # folder fds a chain keeps open besides its root
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclasses.dataclass(slots=True)
class _Level:
    name: bytes
    fd: int  # -1 while closed
    dev: int
    ino: int


class DirChain:
    """The folders from a root fd (the caller's, never closed here) down to the current one."""

    def __init__(self, root_fd: int, max_open: int = MAX_OPEN_DIRS) -> None:
        st = os.fstat(root_fd)
        self._levels = [_Level(b"", root_fd, st.st_dev, st.st_ino)]
        self._max_open = max(1, max_open)
        self._open = 0  # open levels besides the root: always the deepest ones
        self._first_open = 1  # the shallowest of them

    @property
    def fd(self) -> int:
        """The current folder's fd: always open."""
        return self._levels[-1].fd

    @property
    def depth(self) -> int:
        return len(self._levels) - 1

    def push(self, name: bytes, fd: int) -> None:
        """`fd` is folder `name` of the current folder, opened by the caller (see `open_dir`);
        it becomes the current folder and the chain owns the fd. The shallowest open level past
        MAX_OPEN_DIRS is closed."""
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        self._levels.append(_Level(name, fd, st.st_dev, st.st_ino))
        self._open += 1
        while self._open > self._max_open:
            level = self._levels[self._first_open]
            self._first_open += 1
            if level.fd >= 0:
                os.close(level.fd)
                level.fd = -1
                self._open -= 1

    def pop(self) -> None:
        """Closes the current folder; its parent becomes current, reopened if it was closed.
        Raises OSError when the parent cannot be reopened as the same folder: the parent is
        current then, but stays closed (`fd` is -1), and popping it tries its own parent."""
        if len(self._levels) < 2:
            raise ValueError("the root of a DirChain is not popped")
        top = self._levels.pop()
        parent = self._levels[-1]
        try:
            if parent.fd < 0 and len(self._levels) > 1:
                parent.fd = self._reopen(len(self._levels) - 1, top.fd)
                self._open += 1
                self._first_open = len(self._levels) - 1
        finally:
            if top.fd >= 0:
                os.close(top.fd)
                self._open -= 1
        # after a failed reopen this names a closed level, which `push` skips
        self._first_open = min(self._first_open, max(1, len(self._levels) - 1))

    def path_names(self) -> list[bytes]:
        """The names from the root down to the current folder."""
        return [level.name for level in self._levels[1:]]

    def close(self) -> None:
        """Closes every fd the chain owns (not the root's)."""
        while len(self._levels) > 1:
            level = self._levels.pop()
            if level.fd >= 0:
                os.close(level.fd)
        self._open = 0
        self._first_open = 1

    def _reopen(self, index: int, below: int) -> int:
        level = self._levels[index]
        if below >= 0:
            try:
                fd = os.open(b"..", DIR_FLAGS, dir_fd=below)
            except OSError:
                pass
            else:
                if _is(fd, level):
                    return fd
                os.close(fd)
        start = index - 1
        while self._levels[start].fd < 0:
            start -= 1
        fd = open_beneath(self._levels[start].fd, [lv.name for lv in self._levels[start + 1 : index + 1]])
        if not _is(fd, level):
            os.close(fd)
            raise OSError(errno.ESTALE, "the folder was moved or replaced during the walk")
        return fd


def open_source_dir(name: bytes, dir_fd: int | None = None) -> int:
    """A folder being backed up, as `open_dir`, but with O_NOATIME where the kernel allows it (the
    owner's folders, or root): reading a listing would otherwise set the folder's access time,
    which the snapshot records, so the next backup would find every folder it listed changed."""
    try:
        return os.open(name, DIR_FLAGS | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError:  # EPERM: not ours to read without touching (or EACCES: raised again)
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def open_dir(dir_fd: int, name: bytes) -> int:
    """Folder `name` of `dir_fd`, never through a symlink (ELOOP or ENOTDIR then)."""
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def open_beneath(base_fd: int, names: Sequence[bytes]) -> int:
    """The folder `names` below `base_fd`, opened one name at a time so that no path is ever
    longer than a name and no symlink is followed; returns a new fd (`base_fd` stays open)."""
    fd = os.dup(base_fd) if not names else -1
    cur = base_fd
    for name in names:
        try:
            fd = open_dir(cur, name)
        finally:
            if cur != base_fd:
                os.close(cur)
        cur = fd
    return fd


def _is(fd: int, level: _Level) -> bool:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (level.dev, level.ino)


def remove_tree(dir_fd: int, name: bytes) -> None:
    """Removes entry `name` of `dir_fd` and, if it is a folder, everything in it: restore's
    --delete and a folder in the way of a file. Never follows a symlink (one is removed as
    itself) and never uses a path, so it is safe in a target others can write to and works at
    any depth (iterative, with a `DirChain`). Raises OSError for what it cannot remove."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    chain = DirChain(dir_fd)
    try:
        chain.push(name, open_dir(dir_fd, name))
        while chain.depth:
            sub = None
            with os.scandir(chain.fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        sub = os.fsencode(entry.name)
                        break
                    os.unlink(entry.name, dir_fd=chain.fd)
            if sub is not None:
                chain.push(sub, open_dir(chain.fd, sub))
                continue
            emptied = chain.path_names()[-1]
            chain.pop()
            os.rmdir(emptied, dir_fd=chain.fd)
    finally:
        chain.close()
