"""`backupfs mount`: a repository's snapshots as a read-only FUSE filesystem.

`vfs` is the filesystem itself (layout, inodes, reads; async, no FUSE), `fuse` adapts it to
pyfuse3 (the only module importing pyfuse3), and `lifecycle` mounts, serves and unmounts.
"""
