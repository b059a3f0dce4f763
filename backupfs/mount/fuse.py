"""The kernel's side: a thin pyfuse3.Operations over `vfs.Vfs`, and mounting.

The only module that imports pyfuse3. It translates types and errors and nothing else: what the
filesystem holds is decided in `vfs`. Every handler turns an unexpected exception into EIO (and
logs it), because pyfuse3 ends the whole main loop on anything but FUSEError.

It also replaces how pyfuse3's session loop waits for the next request (`_SessionWait`): pyfuse3
passes a trio Lock between its worker tasks and waits in trio's epoll for every request, three
or four trips through trio's scheduler per request. A request that is already queued (the usual
case: the client sends the next one while the reply to the last is still being handled) is now
taken at once. Measured on a trivial filesystem: ~100 -> ~20 µs of CPU per request.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import functools
import logging
import os
import select
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, cast

import pyfuse3
import trio
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
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(ops: Operations, /, *args: P.args, **kwargs: P.kwargs) -> R:
        ops.requests[name] += 1
        try:
            return await _Watched(fn(ops, *args, **kwargs))
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class _Watched(Generic[R]):
    """Awaits a request handler, and when the handler is about to wait (for a load, say), makes
    sure another task watches /dev/fuse meanwhile (`_SessionWait.handler_waits`). A transparent
    trampoline: what the handler yields goes to trio, what trio sends or throws goes back in."""

    __slots__ = ("_coro",)

    def __init__(self, coro: Coroutine[Any, Any, R]) -> None:
        self._coro = coro

    def __await__(self) -> Generator[Any, Any, R]:
        coro = self._coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                trap = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return cast(R, stop.value)
            if _session_wait is not None:
                _session_wait.handler_waits()
            try:
                value, error = (yield trap), None
            except GeneratorExit:  # this await is being closed (never by trio): so is the handler
                coro.close()
                raise
            except BaseException as exc:  # trio's cancellation and the like: the handler decides
                value, error = None, exc


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
        self.requests: collections.Counter[str] = collections.Counter()  # by operation, for `mount -v`

    def init(self) -> None:
        """Called while the kernel's INIT request is answered (on the trio loop)."""
        if self._on_init is not None:
            self._on_init()

    @_translated
    async def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        return _entry(await self.vfs.lookup(parent_inode, name))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self.requests["forget"] += 1
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
        self.requests["statfs"] += 1
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
_MAX_TASKS = 32  # requests handled at once (waiting for loads, say); more wait in the kernel
_FAST_TAKES = 16  # queued requests taken in a row before the other tasks get their turn


class _SessionWait:
    """Replaces pyfuse3's `_wait_fuse_readable`, which its session loop calls before reading
    each request: True when a request can be read, False when the session is over.

    pyfuse3's own passes a trio Lock from task to task and waits in epoll every time: three or
    four trips through trio's scheduler per request. This one first asks the kernel (poll with
    timeout 0) whether a request is queued and if so returns at once; only when none is does it
    wait in trio, one task at a time (the others park). After `_FAST_TAKES` requests in a row it
    yields to the scheduler, so that other tasks (loads finishing, signals) get their turn.

    pyfuse3 counts the tasks waiting here to decide when to start or end worker tasks; this
    does not update that count, so pyfuse3 starts worker tasks up to `_MAX_TASKS` and keeps them.
    A handler that waits (`_Watched`) wakes a parked task so that requests keep being read."""

    _BAD = select.POLLERR | select.POLLHUP | select.POLLNVAL

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pollfd = _PollFd(fd, select.POLLIN, 0)
        self._pollfd_ref = ctypes.byref(self._pollfd)
        self._lot = trio.lowlevel.ParkingLot()
        self._waiting = False  # a task waits in trio for the fd
        self._taken = 0  # requests taken in a row without yielding
        self.over = False
        self.taken_at_once = 0  # requests that were queued when asked for
        self.waited = 0  # times a task waited for a request

    def _ready(self) -> bool:
        if _poll(self._pollfd_ref, 1, 0) <= 0:  # none queued (or EINTR: the next call sees it)
            return False
        if self._pollfd.revents & self._BAD:  # unmounted: every task must read and see it
            self.over = True
            self._lot.unpark_all()
        return True

    async def __call__(self) -> bool:
        if self._taken >= _FAST_TAKES:
            self._taken = 0
            await trio.lowlevel.checkpoint()
        while not self.over:
            # Checked right before pyfuse3 reads, with no await in between: the descriptor
            # blocks, and a read with nothing queued would stop the whole process.
            if self._ready():
                self._taken += 1
                self.taken_at_once += 1
                return True
            self.waited += 1
            self._taken = 0
            if self._waiting:
                await self._lot.park()
                continue
            self._waiting = True
            try:
                await trio.lowlevel.wait_readable(self._fd)
            except trio.ClosedResourceError:  # pyfuse3.terminate()
                self.over = True
            finally:
                self._waiting = False
        self._lot.unpark_all()
        return False

    def handler_waits(self) -> None:
        if not self._waiting:
            self._lot.unpark()


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


# poll(2) through PyDLL, which keeps the GIL: select.poll releases it even for a zero timeout,
# and a worker thread that takes it then (decrypting, decoding) keeps the loop waiting up to the
# switch interval (5 ms) before it may read the request it has just seen.
_poll = ctypes.PyDLL(None).poll
_poll.argtypes = [ctypes.POINTER(_PollFd), ctypes.c_ulong, ctypes.c_int]
_poll.restype = ctypes.c_int

_session_wait: _SessionWait | None = None
_stock_wait: Any = None


def _fuse_fd() -> int | None:
    """The session's /dev/fuse descriptor (pyfuse3 does not expose it): the only one open."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:
            continue
    return found[0] if len(found) == 1 else None


def _install_session_wait() -> None:
    """Puts `_SessionWait` in place of pyfuse3's wait, where pyfuse3 has the one this was
    written against (3.x); otherwise pyfuse3's own stays (slower, equally correct)."""
    global _session_wait, _stock_wait
    stock = getattr(pyfuse3, "_wait_fuse_readable", None)
    fd = _fuse_fd()
    if stock is None or fd is None or not pyfuse3.__version__.startswith("3."):
        log.debug("pyfuse3 %s: its own wait for requests stays", pyfuse3.__version__)
        return
    _stock_wait = stock
    _session_wait = _SessionWait(fd)
    setattr(pyfuse3, "_wait_fuse_readable", _session_wait)  # noqa: B010 (not in the stubs)


def _remove_session_wait() -> None:
    global _session_wait, _stock_wait
    if _stock_wait is not None:
        setattr(pyfuse3, "_wait_fuse_readable", _stock_wait)  # noqa: B010
    _session_wait = _stock_wait = None


async def serve() -> None:
    """Answers requests until `terminate()` or an external unmount (fusermount3 -u)."""
    global _serving
    _serving = True
    _install_session_wait()
    try:
        await pyfuse3.main(min_tasks=1, max_tasks=_MAX_TASKS)
    finally:
        _serving = False
        if _session_wait is not None:
            log.info("requests queued when asked for: %d; waits for one: %d", _session_wait.taken_at_once, _session_wait.waited)
        _remove_session_wait()


def terminate() -> None:
    """Makes `serve()` return; call it on the trio loop."""
    if _session_wait is not None:
        _session_wait.over = True
        _session_wait.handler_waits()
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
