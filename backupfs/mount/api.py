"""What the filesystem's interface is made of: its tunables, the attributes it answers, its error.

The pyfuse3 adapter translates these; nothing here knows FUSE.
"""

from __future__ import annotations

import dataclasses
import os


class FsError(Exception):
    """A failed filesystem request; `errno` is what the caller's syscall returns."""

    def __init__(self, err: int) -> None:
        super().__init__(os.strerror(err))
        self.errno = err


@dataclasses.dataclass(frozen=True, slots=True)
class VfsOptions:
    """Tunables. Timeouts are how long the kernel may cache entries and attributes."""

    cache_bytes: int = 16 << 20  # decrypted chunks kept for partial and concurrent reads (local storage)
    readahead_bytes: int = 8 << 20  # how far ahead of a sequential reader chunks are prefetched
    workers: int = 4  # threads decrypting chunks at once
    # Decoded folder entries kept (~600 bytes each). A walk needs only the folders on its path
    # and the one it reads; 20,000 cost 15 MiB of peak RSS in the benchmark for no speed.
    tree_cache_nodes: int = 5_000
    refresh_interval: float = 3.0  # seconds between polls of the snapshot folder
    content_timeout: float = 86400.0  # snapshot content never changes
    dynamic_timeout: float = 1.0  # folders that follow the snapshot set
    blksize: int = 128 << 10  # st_blksize: the buffer size cp and friends choose
    uid: int = dataclasses.field(default_factory=os.getuid)  # owner of the layout's own folders
    gid: int = dataclasses.field(default_factory=os.getgid)


# Remote storage: read-ahead per request the storage keeps in flight. A sequential reader then
# has that many chunk loads under way, so the link's latency is paid once per batch of them,
# not once per chunk (8 MiB with one chunk at a time left a 20 ms link mostly idle).
REMOTE_READAHEAD_PER_REQUEST = 2 << 20
REMOTE_CACHE_BYTES = 64 << 20  # the mount's default chunk cache over remote storage: holds the read-ahead


def sized_for_storage(options: VfsOptions, local: bool, reads_in_flight: int) -> VfsOptions:
    """`options` with prefetch sized for the storage: unchanged for a local one (the defaults
    were measured on local disk), and for a remote one as many loads at once as it carries
    (`BackendInfo.reads_in_flight`) with the read-ahead to keep them busy, within half the cache
    (prefetched chunks wait there until read)."""
    if local:
        return options
    readahead = max(options.readahead_bytes, reads_in_flight * REMOTE_READAHEAD_PER_REQUEST)
    return dataclasses.replace(
        options,
        workers=max(options.workers, reads_in_flight),
        readahead_bytes=max(options.readahead_bytes, min(readahead, options.cache_bytes // 2)),
    )


@dataclasses.dataclass(slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    blksize: int
    entry_timeout: float
    attr_timeout: float
