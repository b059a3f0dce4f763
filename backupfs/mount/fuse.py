"""The kernel's side: a thin pyfuse3.Operations over `vfs.Vfs`, and mounting.

The only module that imports pyfuse3. It translates types and errors and nothing else: what the
filesystem holds is decided in `vfs`. Every handler turns an unexpected exception into EIO (and
logs it), because pyfuse3 ends the whole main loop on anything but FUSEError.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import pyfuse3
from pyfuse3 import EntryAttributes, FileInfo, ReaddirToken, RequestContext, SetattrFields, StatvfsData

from backupfs.format.tree import NAME_MAX
from backupfs.mount.api import Attr, FsError
from backupfs.mount.vfs import Vfs

log = logging.getLogger(__name__)

_STATFS_BLOCK = 4096  # the block size statfs reports; with no free blocks, only df's look depends on it

P = ParamSpec("P")
R = TypeVar("R")
Handler = Callable[Concatenate["Operations", P], Coroutine[Any, Any, R]]


def _translated(fn: Handler[P, R]) -> Handler[P, R]:
    @functools.wraps(fn)
    async def wrapper(ops: Operations, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(ops, *args, **kwargs)
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _entry(a: Attr) -> EntryAttributes:
    e = EntryAttributes()
    e.st_ino = a.ino
    e.generation = 0
    e.entry_timeout = a.entry_timeout
    e.attr_timeout = a.attr_timeout
    e.st_mode = a.mode
    e.st_nlink = a.nlink
    e.st_uid = a.uid
    e.st_gid = a.gid
    e.st_rdev = a.rdev
    e.st_size = a.size
    e.st_blksize = a.blksize
    e.st_blocks = a.blocks
    e.st_atime_ns = a.atime_ns
    e.st_mtime_ns = a.mtime_ns
    e.st_ctime_ns = a.ctime_ns
    return e


def _read_only() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


class Operations(pyfuse3.Operations):
    """Requests from the kernel, answered by `vfs`. Content never changes, so files open with
    keep_cache (pages survive close) and without direct_io (the page cache and its read-ahead
    serve `cp`); every modifying request fails with EROFS. `flush` stays unimplemented, so the
    kernel stops asking and a close after an unmount cannot fail."""

    supports_dot_lookup = False  # not NFS-exportable: the kernel never looks up "." or ".."
    enable_writeback_cache = False

    def __init__(self, vfs: Vfs, *, enable_acl: bool = False, on_init: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.vfs = vfs
        self.enable_acl = enable_acl  # the kernel then enforces stored ACLs (with default_permissions)
        self._on_init = on_init

    def init(self) -> None:
        """Called while the kernel's INIT request is answered (on the trio loop)."""
        if self._on_init is not None:
            self._on_init()

    @_translated
    async def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        return _entry(await self.vfs.lookup(parent_inode, name))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self.vfs.forget(inode_list)
        except Exception:
            log.exception("internal error in forget")

    @_translated
    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        return _entry(await self.vfs.getattr(inode))

    @_translated
    async def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        return await self.vfs.readlink(inode)

    @_translated
    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        return await self.vfs.opendir(inode)

    @_translated
    async def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        for entry in self.vfs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, entry.name, _entry(entry.attr), entry.next_id):
                break
            self.vfs.remember(entry)

    @_translated
    async def releasedir(self, fh: int) -> None:
        self.vfs.releasedir(fh)

    @_translated
    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        fh = await self.vfs.open(inode, flags)
        return FileInfo(fh=fh, keep_cache=True, direct_io=False)

    @_translated
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return cast(bytes, await self.vfs.read(fh, off, size))  # pyfuse3 takes any buffer: no copy

    @_translated
    async def release(self, fh: int) -> None:
        self.vfs.release(fh)

    @_translated
    async def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        return await self.vfs.getxattr(inode, name)

    @_translated
    async def listxattr(self, inode: int, ctx: RequestContext) -> Sequence[bytes]:
        return await self.vfs.listxattr(inode)

    async def statfs(self, ctx: RequestContext) -> StatvfsData:
        st = StatvfsData()
        st.f_bsize = st.f_frsize = _STATFS_BLOCK
        st.f_blocks = st.f_bfree = st.f_bavail = 0
        st.f_files = self.vfs.inode_count()
        st.f_ffree = st.f_favail = 0
        st.f_namemax = NAME_MAX
        return st

    # Everything below would change the filesystem.

    async def setattr(
        self, inode: int, attr: EntryAttributes, fields: SetattrFields, fh: int | None, ctx: RequestContext
    ) -> EntryAttributes:
        raise _read_only()

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: RequestContext) -> EntryAttributes:
        raise _read_only()

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: RequestContext) -> EntryAttributes:
        raise _read_only()

    async def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        raise _read_only()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        raise _read_only()

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: RequestContext) -> EntryAttributes:
        raise _read_only()

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: RequestContext,
    ) -> None:
        raise _read_only()

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: RequestContext) -> EntryAttributes:
        raise _read_only()

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise _read_only()

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: RequestContext
    ) -> tuple[FileInfo, EntryAttributes]:
        raise _read_only()

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: RequestContext) -> None:
        raise _read_only()

    async def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        raise _read_only()


def mount(ops: Operations, mountpoint: str, *, allow_other: bool, fsname: str = "backupfs") -> None:
    """Mounts read-only (the kernel refuses most writes itself with EROFS). With allow_other the
    kernel checks stored modes, owners and ACLs (default_permissions) for every user."""
    options = {f"fsname={fsname}", "subtype=backupfs", "ro", "nosuid", "nodev"}
    if allow_other:
        options |= {"allow_other", "default_permissions"}
    try:
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as exc:
        raise OSError(errno.EIO, f"cannot mount at {mountpoint} ({exc}): is FUSE available?") from exc


_serving = False  # whether the session exists: notifications to a missing one would crash


async def serve() -> None:
    """Answers requests until `terminate()` or an external unmount (fusermount3 -u)."""
    global _serving
    _serving = True
    try:
        await pyfuse3.main(min_tasks=4, max_tasks=64)
    finally:
        _serving = False


def terminate() -> None:
    """Makes `serve()` return; call it on the trio loop."""
    pyfuse3.terminate()


def unmount() -> None:
    """Unmounts (lazily, so a busy mount still goes) and frees the session; idempotent."""
    try:
        pyfuse3.close(unmount=True)
    except Exception as exc:  # already closed, or torn down from outside
        log.debug("close: %s", exc)


def invalidate_entry(parent: int, name: bytes) -> None:
    """Tells the kernel to drop a cached name (from a background thread, never blocking)."""
    if _serving:
        pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)


def store_pages(inode: int, data: memoryview) -> None:
    """Puts a whole file's content into the kernel's page cache, so that reading it sends no
    request. Call it from a worker thread only: it waits for the page locks of READs in flight,
    which the trio loop answers."""
    if _serving:
        pyfuse3.notify_store(inode, 0, cast(bytes, data))  # any buffer will do: no copy
