"""Helpers around FUSE mount processes: unmounting, their peak RSS, their log."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path


def tail(path: Path, n: int = 3) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    return ""


def vmhwm_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def unmount(mnt: Path) -> None:
    if not os.path.ismount(mnt):
        return
    for cmd in (["fusermount3", "-u", str(mnt)], ["fusermount", "-u", str(mnt)], ["umount", str(mnt)]):
        if shutil.which(cmd[0]) is None:
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(cmd, capture_output=True, timeout=60)
        if not os.path.ismount(mnt):
            return
        time.sleep(0.5)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)
