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

    cache_bytes: int = 16 << 20  # decrypted chunks kept for partial and concurrent reads
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
