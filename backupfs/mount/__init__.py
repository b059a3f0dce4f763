"""`backupfs mount`: a repository's snapshots as a read-only FUSE filesystem.

Bottom to top (each module imports only those above it in this list)::

    api        tunables, attributes, the error a request fails with
    keys       identity keys, and inode numbers derived from them (pure)
    model      the snapshot set and its names; what a versions/ folder shows (pure)
    inodes     one typed class per kind of entry; the table the kernel's lookups keep
    loader     single-flight LRU: concurrent misses share one load, run in a thread
    storage    the only caller of the repository, always from worker threads
    layout     the layout's own folders (snapshots/, ids/, hosts/, tags/, latest); polling
    trees      the snapshots' folders and their entries
    versions   versions/<path>: every path's history
    attrs      stat for every kind of entry
    reader     open and read: prefetch, sibling prefetch, pages pushed to the kernel
    vfs        the facade the adapter calls: no FUSE, tested directly (tests/test_vfs.py)
    fuse       the pyfuse3 adapter, the only module importing pyfuse3
    lifecycle  mount, serve until a signal or an unmount, unmount
"""
