"""backupfs: deduplicating, encrypted, versioned backups you can mount."""

__version__ = "0.1.0"
