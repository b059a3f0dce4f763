"""`python -m backupfs`: the same as the `backupfs` command."""

from backupfs.cli.main import entry

entry()
