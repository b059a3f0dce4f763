"""Real folders deeper than PATH_MAX allows to name: made, described and removed through folder
fds, one level at a time (no path is ever longer than a name), without recursion.

shutil.rmtree and os.walk recurse per level in Python 3.11, so they cannot remove or read these:
tests that make one remove it with `remove_tree`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NAME = b"ab"  # each level: 2,000 levels make a path of 6,000 bytes, past PATH_MAX (4,096)
EVERY = 250  # a level with a file, a symlink and an extended attribute


def make_deep(base: Path, depth: int) -> None:
    """`base`/ab/ab/... `depth` levels deep. Every EVERY levels a file, a symlink and an xattr on
    the folder; at the bottom a file with an xattr and a second name (a hardlink)."""
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(base, DIR_FLAGS)
    try:
        for level in range(1, depth + 1):
            os.mkdir(NAME, 0o750, dir_fd=fd)
            sub = os.open(NAME, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = sub
            if level % EVERY == 0:
                _write(fd, b"f%d" % level, b"level %d\n" % level * 50, 0o640)
                os.symlink(b"../" * 3 + b"f", b"link", dir_fd=fd)
                os.setxattr(f"/proc/self/fd/{fd}", b"user.level", b"%d" % level)
        _write(fd, b"deepest", b"the bottom\n", 0o600)
        os.setxattr(f"/proc/self/fd/{fd}/deepest", b"user.deep", b"yes")
        os.link(b"deepest", b"deepest-too", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def _write(dir_fd: int, name: bytes, data: bytes, mode: int) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(name, mode, dir_fd=dir_fd)


def describe(top: Path) -> Iterator[tuple[bytes, str]]:
    """(path below `top`, what it is) for every entry, in name order, depth first: type, mode,
    size and content hash, symlink target, extended attributes, and the link count of files.
    One folder fd is open at a time (it climbs back through '..'), so no fd limit bounds the
    depth."""
    fd = os.open(top, DIR_FLAGS)
    stack: list[tuple[list[bytes], int]] = [(_names(fd), 0)]  # per folder: names left, path length
    path = bytearray()
    try:
        while stack:
            names, plen = stack[-1]
            if not names:
                stack.pop()
                if stack:
                    up = os.open(b"..", DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = up
                continue
            name = names.pop(0)
            del path[plen:]
            path += b"/" + name
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            what = f"{stat.filemode(st.st_mode)} xattrs={_xattrs(fd, name, st)}"
            if stat.S_ISREG(st.st_mode):
                with open(os.open(name, os.O_RDONLY, dir_fd=fd), "rb") as f:
                    what += f" {st.st_size} {hashlib.sha256(f.read()).hexdigest()} links={st.st_nlink}"
            elif stat.S_ISLNK(st.st_mode):
                what += f" -> {os.readlink(name, dir_fd=fd)!r}"
            yield bytes(path), what
            if stat.S_ISDIR(st.st_mode):
                down = os.open(name, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = down
                stack.append((_names(fd), len(path)))
    finally:
        os.close(fd)


def _names(fd: int) -> list[bytes]:
    return sorted(os.fsencode(n) for n in os.listdir(fd))


def _xattrs(dir_fd: int, name: bytes, st: os.stat_result) -> list[tuple[str, bytes]]:
    if stat.S_ISLNK(st.st_mode):
        return []
    where = f"/proc/self/fd/{dir_fd}/{os.fsdecode(name)}"
    return sorted((a, os.getxattr(where, a)) for a in os.listxattr(where) if a.startswith("user."))


def remove_tree(top: Path) -> None:
    """Removes `top` and everything below it, however deep, holding two fds at most (it climbs
    back through '..'); a missing `top` is fine."""
    try:
        fd = os.open(top, DIR_FLAGS)
    except FileNotFoundError:
        return
    names: list[bytes] = []  # the folders entered below `top`
    try:
        while True:
            os.chmod(fd, 0o700)
            sub = None
            for entry in _names(fd):
                if stat.S_ISDIR(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                    sub = entry
                    break
                os.unlink(entry, dir_fd=fd)
            if sub is not None:
                down = os.open(sub, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = down
                names.append(sub)
                continue
            if not names:
                break
            up = os.open(b"..", DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    top.rmdir()
