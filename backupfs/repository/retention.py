"""S3 Object Lock for a repository (design.md "Object Lock"): how long files are locked.

A repository made with `init --object-lock DAYS` promises that every file a snapshot younger than
DAYS needs (its packs, the index files listing them, the keys, the config, the snapshot file)
stays undeletable until DAYS after the snapshot, even for a holder of the storage's keys.

New files are written locked for DAYS plus a step (`write_seconds`). A backup then extends what
its snapshot needs only where the lock would end before snapshot time + DAYS + SAFETY_MARGIN, and
by the same step past that, so a file used by daily backups is extended about once a step, not
at every backup (kopia extends every file at each full maintenance instead).
"""

from __future__ import annotations

from typing import Final

from backupfs.format.config import ObjectLockConfig

DAY: Final = 86400.0
# How far past the promise a lock is set (and extended), in days: one extension request per file
# per step for files in use, against at most this much longer wait before a forgotten file can go.
EXTEND_STEP_DAYS: Final = 7
# Covers clocks that disagree (the storage judges by its own, retain-until dates are computed by
# ours) and the time from the check to the snapshot file's write.
SAFETY_MARGIN: Final = DAY


def step_days(config: ObjectLockConfig) -> int:
    """A week, or the retention itself when it is shorter."""
    return min(EXTEND_STEP_DAYS, config.days)


def write_seconds(config: ObjectLockConfig) -> float:
    """How long a new file is locked from its write."""
    return (config.days + step_days(config)) * DAY
