"""File metadata <-> tree `Node` (format.md section 9): the only module that reads or sets OS metadata.

Backup calls `node_from_path` and `data_extents`; restore calls `create_node` / `create_file`,
writes file contents and links hardlinks itself, then `apply_metadata`. Nothing here knows about the
repository.

Every function takes the parent directory either as an open directory fd (preferred: lookups are
then relative to a directory the caller already holds, so a path component swapped for a symlink
mid-run cannot redirect them) or as a path (whose own components the kernel resolves, following
symlinks: trusting them is then the caller's business). The entry itself, the final component, is
never followed if it is a symlink. Extended attributes are reached through
``/proc/self/fd`` because Linux has no ``*xattrat`` calls usable from Python, so ``/proc`` must be
mounted.

Restore ordering the caller must respect:

1. create a directory (`create_node`) before its entries, and apply its metadata only after every
   entry in it is restored (post-order): creating entries changes the directory's mtime, and a
   read-only or 0o000 mode would stop a non-root restore from writing into it;
2. write and close a file's content before `apply_metadata`: writing clears setuid/setgid and
   ``security.capability``;
3. call `apply_metadata` once per inode for hardlinks (linking does not change the inode's
   metadata, so before or after linking both work).
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import pwd
import stat
from typing import TypeAlias

from backupfs.errors import IntegrityError
from backupfs.format.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node

Parent: TypeAlias = int | str | bytes | os.PathLike[str] | os.PathLike[bytes]
"""A directory: an open fd (O_DIRECTORY or O_PATH) or a path."""

_OWNER_NAMES_CACHED = 4096  # uid and gid names remembered: a tree has few owners, NSS can be slow
_ST_BLOCK = 512  # the unit of st_blocks, whatever the file system's block size
_ACL_ACCESS = b"system.posix_acl_access"
_ACL_DEFAULT = b"system.posix_acl_default"
# Errors that mean "this filesystem / this object / this caller cannot have that xattr".
_XATTR_UNSUPPORTED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENODATA})

_TYPE_OF_FMT = {
    stat.S_IFREG: FILE,
    stat.S_IFDIR: DIR,
    stat.S_IFLNK: SYMLINK,
    stat.S_IFIFO: FIFO,
    stat.S_IFCHR: CHARDEV,
    stat.S_IFBLK: BLOCKDEV,
}
_FMT_OF_DEVICE = {CHARDEV: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK}


def node_type(st: os.stat_result) -> str | None:
    """The node type letter for an lstat result; None for sockets and anything unknown."""
    return _TYPE_OF_FMT.get(stat.S_IFMT(st.st_mode))


# --------------------------------------------------------------------------- backup side


def node_from_path(parent: Parent, name: bytes, st: os.stat_result | None = None) -> Node | None:
    """Describe entry `name` of `parent` (never following it) as a Node without content/subtree.

    `st` is the entry's lstat result if the caller already has it (from scandir). Returns None for
    sockets (and unknown types), which cannot be backed up: the caller warns and skips. OSError
    (e.g. the entry vanished) propagates for the caller to report. `name` is recorded as given; the
    caller may overwrite `node.name` (e.g. when describing a directory as b".").
    """
    path, dir_fd = _locate(parent, name)
    if st is None:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    kind = node_type(st)
    if kind is None:
        return None
    node = Node(
        name=name,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=user_name(st.st_uid),
        group=group_name(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        atime_ns=st.st_atime_ns,
        ctime_ns=st.st_ctime_ns,
        size=st.st_size if kind == FILE else 0,
        inode=st.st_ino,
        device=st.st_dev,
        nlink=st.st_nlink,
    )
    if kind in (CHARDEV, BLOCKDEV):
        node.rdev = st.st_rdev
    elif kind == SYMLINK:
        node.link_target = os.readlink(path, dir_fd=dir_fd)
    node.xattrs = read_xattrs(_xattr_path(path, dir_fd)) or None
    return node


def read_xattrs(path: bytes | int, *, follow_symlinks: bool = False) -> list[tuple[bytes, bytes]]:
    """All extended attributes of `path` (by default of a symlink itself, not its target), sorted.

    Includes every namespace the kernel lets us list (user, trusted and security as root, and the
    POSIX ACLs as ``system.posix_acl_*``). A filesystem without xattrs, or an attribute removed
    between listing and reading, is not an error.
    """
    try:
        names = os.listxattr(path, follow_symlinks=follow_symlinks)
    except OSError as exc:
        if exc.errno in _XATTR_UNSUPPORTED:
            return []
        raise
    out: list[tuple[bytes, bytes]] = []
    for str_name in names:
        attr = os.fsencode(str_name)
        try:
            value = os.getxattr(path, attr, follow_symlinks=follow_symlinks)
        except OSError as exc:
            if exc.errno in _XATTR_UNSUPPORTED:
                continue
            raise
        out.append((attr, value))
    out.sort()
    return out


@functools.lru_cache(maxsize=_OWNER_NAMES_CACHED)
def user_name(uid: int) -> str | None:
    """The passwd name for `uid`, cached: a tree has few owners and NSS lookups can be slow."""
    try:
        return _utf8_or_none(pwd.getpwuid(uid).pw_name)
    except (KeyError, OverflowError):
        return None


@functools.lru_cache(maxsize=_OWNER_NAMES_CACHED)
def group_name(gid: int) -> str | None:
    """The group name for `gid`, cached like `user_name`."""
    try:
        return _utf8_or_none(grp.getgrgid(gid).gr_name)
    except (KeyError, OverflowError):
        return None


def _utf8_or_none(name: str) -> str | None:
    # Names are msgpack str; one that came back with surrogate escapes cannot be encoded.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return name


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The (offset, length) ranges of `fd`'s first `size` bytes that hold data; the rest are holes.

    Only files with fewer allocated blocks than their size are probed (SEEK_DATA/SEEK_HOLE), so a
    normal file costs one fstat. Filesystems without SEEK_DATA give one extent covering everything.
    The file offset is restored; read with os.pread.
    """
    if size <= 0:
        return []
    if os.fstat(fd).st_blocks * _ST_BLOCK >= size:
        return [(0, size)]
    saved = os.lseek(fd, 0, os.SEEK_CUR)
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, end - start))
            pos = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return [(0, size)]
        raise
    finally:
        os.lseek(fd, saved, os.SEEK_SET)
    return extents


def hardlink_key(node: Node) -> tuple[int, int] | None:
    """(device, inode) for a regular file with other names, else None.

    Directories are excluded (their nlink counts subdirectories) and so are other types: restore
    recreates those cheaply and linking devices or fifos is rarely meant.
    """
    if node.type != FILE or node.nlink is None or node.nlink < 2:
        return None
    if node.device is None or node.inode is None:
        return None
    return (node.device, node.inode)


# --------------------------------------------------------------------------- restore side


def open_dir(parent: Parent, name: bytes) -> int:
    """Open directory `name` of `parent` for use as a parent fd; refuses (ELOOP/ENOTDIR) a symlink."""
    _check_name(name)
    path, dir_fd = _locate(parent, name)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def create_node(parent: Parent, node: Node, *, exist_ok: bool = False) -> None:
    """Create a directory, symlink, fifo or device for `node` inside `parent`, with no metadata yet.

    Directories start as 0o700 so the restore can fill them; `apply_metadata` sets the real mode
    later. Nothing is replaced: an existing entry raises FileExistsError, except an existing real
    directory for a directory node when `exist_ok` (restoring into a present tree). An existing
    symlink is never followed. Regular files go through `create_file`.
    """
    _check_name(node.name)
    path, dir_fd = _locate(parent, node.name)
    if node.type == DIR:
        try:
            os.mkdir(path, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            if not exist_ok or not stat.S_ISDIR(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise
    elif node.type == SYMLINK:
        if node.link_target is None:
            raise IntegrityError(f"symlink node {_shown(node.name)} has no target")
        os.symlink(node.link_target, path, dir_fd=dir_fd)
    elif node.type == FIFO:
        os.mkfifo(path, 0o600, dir_fd=dir_fd)
    elif node.type in _FMT_OF_DEVICE:
        if node.rdev is None:
            raise IntegrityError(f"device node {_shown(node.name)} has no device number")
        os.mknod(path, 0o600 | _FMT_OF_DEVICE[node.type], node.rdev, dir_fd=dir_fd)
    elif node.type == FILE:
        raise ValueError("regular files are created with create_file")
    else:
        raise IntegrityError(f"node {_shown(node.name)} has unknown type {node.type!r}")


def create_file(parent: Parent, node: Node) -> int:
    """Create regular file `node.name` in `parent` (mode 0o600, must not exist); return a write fd.

    O_EXCL makes an existing entry, including a planted symlink, an error rather than a target.
    """
    _check_name(node.name)
    path, dir_fd = _locate(parent, node.name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o600, dir_fd=dir_fd)


def apply_metadata(parent: Parent, node: Node, *, owner: bool) -> list[str]:
    """Set `node`'s ownership, xattrs/ACLs, mode and times on entry `node.name` of `parent`.

    Order matters: chown clears setuid/setgid and capabilities, so it comes first; xattrs (ACLs
    rewrite the group mode bits) come before chmod; times come last because every other change
    would bump them. `owner` (normally: running as root) enables chown to the recorded numeric
    uid/gid; names are informational. ACLs the new entry inherited from a default ACL but the node
    lacks are removed. Symlinks get ownership, xattrs and times but no mode (Linux has none).

    The entry is never followed: if it is a symlink but the node is not, OSError(ELOOP) is raised
    and nothing is changed; another type mismatch raises FileExistsError. Failures to set an xattr
    (unsupported filesystem, not permitted) do not stop the rest; they are returned as warnings.
    See the module docstring for when to call this (post-order for directories).
    """
    _check_name(node.name)
    path, dir_fd = _locate(parent, node.name)
    pfd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(pfd)
        kind = node_type(st)
        if kind != node.type:
            if kind == SYMLINK:
                raise OSError(errno.ELOOP, "refusing to follow a symlink where a non-symlink belongs", path)
            raise FileExistsError(errno.EEXIST, f"entry exists with type {kind!r}, not {node.type!r}", path)
        if kind == SYMLINK:
            # A symlink cannot be pinned through /proc without following it: use nofollow calls.
            return _apply_to_symlink(path, dir_fd, node, owner=owner)
        # Everything else is changed through the O_PATH fd, so all steps hit the inode checked above.
        target = b"/proc/self/fd/%d" % pfd
        if owner:
            os.chown(target, node.uid, node.gid)
        warnings = _apply_xattrs(target, node, current=read_xattrs(target, follow_symlinks=True), follow=True)
        os.chmod(target, node.mode & 0o7777)
        os.utime(target, ns=(node.atime_ns, node.mtime_ns))
        return warnings
    finally:
        os.close(pfd)


def apply_metadata_fd(fd: int, node: Node, *, owner: bool) -> list[str]:
    """`apply_metadata` for a regular file through its still-open descriptor, in the same order.

    The restore's hot path: no path lookup, no O_PATH open, no /proc resolution per file (those
    were most of the system time of restoring many small files). Call after the content is
    written, before closing.
    """
    if owner:
        os.fchown(fd, node.uid, node.gid)
    warnings = _apply_xattrs(fd, node, current=read_xattrs(fd, follow_symlinks=True), follow=True)
    os.fchmod(fd, node.mode & 0o7777)
    os.utime(fd, ns=(node.atime_ns, node.mtime_ns))
    return warnings


def _apply_to_symlink(path: bytes, dir_fd: int | None, node: Node, *, owner: bool) -> list[str]:
    if owner:
        os.chown(path, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
    warnings = _apply_xattrs(_xattr_path(path, dir_fd), node, current=[], follow=False)
    os.utime(path, ns=(node.atime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
    return warnings


def _apply_xattrs(
    path: bytes | int, node: Node, *, current: list[tuple[bytes, bytes]], follow: bool
) -> list[str]:
    wanted = dict(node.xattrs or ())
    warnings: list[str] = []
    for attr, _value in current:
        if attr in (_ACL_ACCESS, _ACL_DEFAULT) and attr not in wanted:
            try:
                os.removexattr(path, attr, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in _XATTR_UNSUPPORTED:
                    warnings.append(f"cannot remove inherited {_shown(attr)}: {exc.strerror}")
    current_values = dict(current)
    for attr, value in sorted(wanted.items()):
        if current_values.get(attr) == value:
            continue
        try:
            os.setxattr(path, attr, value, follow_symlinks=follow)
        except OSError as exc:
            warnings.append(f"cannot set xattr {_shown(attr)}: {exc.strerror}")
    return warnings


# --------------------------------------------------------------------------- helpers


def _shown(name: bytes) -> str:
    """A stored name in a message, quoted, its bytes as they are: whoever prints the message
    escapes it once (cli/_quote.py). repr() escaped it here already, so `\x01` was shown `\\x01`."""
    return f"'{os.fsdecode(name)}'"


def _check_name(name: bytes) -> None:
    if not Node(name=name, type=FILE).is_safe_name():
        raise IntegrityError(f"refusing unsafe entry name {_shown(name)}")


def _locate(parent: Parent, name: bytes) -> tuple[bytes, int | None]:
    """(path, dir_fd) for os.* calls: `name` relative to an fd, or joined onto a parent path."""
    if isinstance(parent, int):
        return name, parent
    return os.path.join(os.fsencode(parent), name), None


def _xattr_path(path: bytes, dir_fd: int | None) -> bytes:
    """A path usable by the *xattr calls (which lack dir_fd) that resolves `path` relative to `dir_fd`."""
    if dir_fd is None:
        return path
    return b"/proc/self/fd/%d/%s" % (dir_fd, path)
