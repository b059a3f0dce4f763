"""Services that work on a repository and the local file system: backup, restore, check, copy,
and the file-system metadata, exclude rules and tree walking they share (layer 3)."""
