"""The corpus trees the backup, restore, check and mount sections run on, and how rows name them."""

from __future__ import annotations

from dataclasses import dataclass

from benchlib.corpus import TINY_MOUNT_SUBSET


@dataclass(frozen=True)
class Tree:
    """A corpus tree as the sections use it."""

    name: str  # the corpus tree (tools/benchlib/corpus.py)
    label: str  # how rows name it
    what: str  # how notes and the log name it
    by_bytes: bool  # its speeds in MiB/s (a tree of large files), else files/s
    mount_subset: str = ""  # the folder the mount section reads through the mount ("" = all of it)


TREES = {
    t.name: t
    for t in (
        Tree("mixed", "mixed", "the mixed tree", by_bytes=True),
        Tree("small", "small files", "the small-file tree", by_bytes=False),
        Tree("real", "real tree", "the real tree", by_bytes=False),
        Tree("tiny", "tiny files", "the tiny-file tree", by_bytes=False, mount_subset=TINY_MOUNT_SUBSET),
    )
}
