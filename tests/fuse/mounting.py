"""Helpers for real-mount tests: the CLI on a fast repository, a running mount, the mount table.

A plain module, not a conftest.py: tests/adversarial imports it too (pyproject's pythonpath has
tests/fuse).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from backupfs.backends.local import LocalBackend
from backupfs.repository.repo import Repository

CAN_MOUNT = os.path.exists("/dev/fuse") and os.geteuid() == 0
SKIP_REASON = "real FUSE mounts need /dev/fuse and root"
PASSWORD = "mount tests"


def is_mounted(path: Path) -> bool:
    with open("/proc/mounts", encoding="utf-8", errors="surrogateescape") as f:
        return any(len(fields) > 1 and fields[1] == str(path) for fields in (line.split() for line in f))


class Cli:
    """The real command line on one repository, whose key derivation is cheap (fast start-up)."""

    def __init__(self, base: Path) -> None:
        self.repo = base / "repo"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPFS_")}
        self.env.update(BACKUPFS_PASSWORD=PASSWORD, HOME=str(base / "home"), XDG_CACHE_HOME=str(base / "cache"))
        Repository.init(LocalBackend(str(self.repo)), PASSWORD.encode(), kdf=(1, 8192)).close()

    def __call__(self, *args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [sys.executable, "-m", "backupfs", "-r", str(self.repo), *map(str, args)],
            capture_output=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"backupfs {args} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
        return proc


class Mount:
    """A running `backupfs mount` process and its mount point."""

    def __init__(self, proc: subprocess.Popen[bytes], path: Path, log: Path) -> None:
        self.proc = proc
        self.path = path
        self.log = log

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 15, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; mount log:\n{self.stderr()}")
            time.sleep(0.05)
