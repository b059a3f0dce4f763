"""The life of a mount: check, mount, serve on trio until a signal or an external unmount, unmount.

Whatever ends it (Ctrl-C, SIGTERM, SIGHUP, `fusermount3 -u`, an error), the filesystem is
unmounted before the process exits, so no stale mount is left behind. Signals are caught from
before the mount exists, so none can kill the process between mounting and serving.

With a `task`, the mount serves only while the task runs (in a worker thread, once the kernel is
connected): `backupfs verify --through-mount` reads its sample through a real mount this way.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

import trio

from backupfs.errors import STOP_SIGNALS, BackupfsError, Terminated, sole_error
from backupfs.format.tree import Node
from backupfs.malloc_arenas import cap_malloc_arenas
from backupfs.mount import fuse
from backupfs.mount.api import VfsOptions
from backupfs.mount.vfs import Vfs
from backupfs.repository.repo import Repository

log = logging.getLogger(__name__)
T = TypeVar("T")

TRIM_INTERVAL = 5.0  # seconds between handing freed heap pages back to the OS


@dataclasses.dataclass(frozen=True)
class MountOptions:
    allow_other: bool = False
    readahead_kb: int = 4096  # per-mount kernel read-ahead; measured +60% on sequential reads
    vfs: VfsOptions = dataclasses.field(default_factory=VfsOptions)
    root: Node | None = None  # one snapshot's folder at the root (`mount MNT SNAP`), not the layout


@dataclasses.dataclass
class _Task(Generic[T]):
    """A blocking job to run while mounted, and how it ended."""

    job: Callable[[], T]
    result: T | None = None
    done: bool = False
    signal: int | None = None  # what stopped the mount before the job was done


def run(
    repo: Repository,
    mountpoint: str,
    options: MountOptions,
    on_ready: Callable[[], None] | None = None,
    load_index: Callable[[], set[str]] | None = None,
) -> None:
    """Mounts `repo` at `mountpoint` and serves it until unmounted or signalled. `load_index`
    (see `Vfs`) may hand over an index load that is already under way."""
    _run(repo, mountpoint, options, on_ready, load_index, None)


def run_task(repo: Repository, mountpoint: str, options: MountOptions, job: Callable[[], T]) -> T:
    """Mounts `repo`, runs `job` in a worker thread once the mount is up (it may read the mount:
    the loop serves it meanwhile), unmounts, and returns what `job` returned. A signal ends it as
    it ends the mount, and is raised as Ctrl-C (KeyboardInterrupt) or `Terminated`."""
    task = _Task(job)
    _run(repo, mountpoint, options, None, None, task)
    if task.signal is not None:
        raise KeyboardInterrupt if task.signal == signal.SIGINT else Terminated(task.signal)
    if not task.done:  # unmounted from outside (fusermount3 -u)
        raise BackupfsError(f"{mountpoint} was unmounted before the work on it was done")
    return task.result  # type: ignore[return-value]


def _run(
    repo: Repository,
    mountpoint: str,
    options: MountOptions,
    on_ready: Callable[[], None] | None,
    load_index: Callable[[], set[str]] | None,
    task: _Task[T] | None,
) -> None:
    cap_malloc_arenas()
    try:
        trio.run(_main, repo, mountpoint, options, on_ready, load_index, task)
    except BaseExceptionGroup as group:
        # trio wraps what ended the mount (a damaged index file, say) in nursery groups: the
        # command reports that one error on one line, as every other command does
        raise sole_error(group) from None


async def _trim_memory_periodically(interval: float = TRIM_INTERVAL) -> None:
    """Hands freed heap pages back to the OS now and then: after a large file has streamed
    through, glibc keeps the freed chunk buffers (measured: 110 -> ~60 MiB RSS after 1 GiB)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    while True:
        await trio.sleep(interval)
        await trio.to_thread.run_sync(trim, 0)


async def _main(
    repo: Repository,
    mountpoint: str,
    options: MountOptions,
    on_ready: Callable[[], None] | None,
    load_index: Callable[[], set[str]] | None,
    task: _Task[T] | None,
) -> None:
    vfs = Vfs(
        repo,
        options.vfs,
        invalidate=fuse.invalidate_entry,
        store=fuse.store_pages,
        load_index=load_index,
        root=options.root,
    )
    connected = trio.Event()
    ops = fuse.Operations(vfs, enable_acl=options.allow_other, on_init=connected.set)
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(vfs.serve)
            fuse.mount(ops, mountpoint, allow_other=options.allow_other)
            try:
                nursery.start_soon(_stop_on_signal, signals, task)
                nursery.start_soon(_trim_memory_periodically)
                nursery.start_soon(_when_connected, connected, mountpoint, options.readahead_kb, on_ready)
                if task is not None:
                    nursery.start_soon(_run_task, connected, task)
                await fuse.serve()
            finally:
                fuse.unmount()
                nursery.cancel_scope.cancel()
                log.info("requests answered: %s", _counts(ops.requests))


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counter.items())) or "none"


async def _stop_on_signal(signals: AsyncIterator[int], task: _Task[T] | None) -> None:
    async for signum in signals:
        log.info("%s: unmounting", signal.Signals(signum).name)
        if task is not None and not task.done:
            task.signal = signum
        fuse.terminate()
        return


async def _run_task(connected: trio.Event, task: _Task[T]) -> None:
    """The task, in a thread of its own, once the kernel talks to the mount; then unmounts. An
    error in it ends the mount and is raised by `run_task`."""
    await connected.wait()
    await trio.sleep(0)  # as _when_connected: after the INIT reply
    try:
        task.result = await trio.to_thread.run_sync(task.job)
        task.done = True
    finally:
        fuse.terminate()


async def _when_connected(
    connected: trio.Event, mountpoint: str, readahead_kb: int, on_ready: Callable[[], None] | None
) -> None:
    await connected.wait()
    await trio.sleep(0)  # the INIT reply, which resets the read-ahead, is sent after init() returns
    _raise_readahead(mountpoint, readahead_kb)
    if on_ready is not None:
        on_ready()


def _raise_readahead(mountpoint: str, kb: int) -> None:
    """Raises this mount's read-ahead (sysfs, root only), once the kernel's INIT exchange has set
    it. It belongs to the mount's own backing device, which goes away with it: nothing to undo."""
    dev = _mount_device(mountpoint)
    if dev is None or kb <= 0:
        return
    path = f"/sys/class/bdi/{dev}/read_ahead_kb"
    try:
        with open(path, "r+") as f:
            if int(f.read().strip() or 0) < kb:
                f.seek(0)
                f.write(str(kb))
    except (OSError, ValueError) as exc:
        log.debug("cannot raise read-ahead via %s: %s", path, exc)


def _mount_device(mountpoint: str) -> str | None:
    """The device ("major:minor") mounted at `mountpoint`, read from mountinfo: stat() would
    ask this very process, which is not serving yet."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == mountpoint:
            found = fields[2]  # the last one wins: ours is on top
    return found


def _unescape(field: str) -> str:
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
