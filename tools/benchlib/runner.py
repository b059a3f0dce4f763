"""Running one command measured alone (wall time, CPU, peak RSS) and dropping the page cache."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Run:
    """One finished command, measured alone: wall time, peak RSS and CPU time from wait4()."""

    cmd: list[str]
    rc: int
    wall_s: float
    maxrss_kib: int
    user_s: float
    sys_s: float
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    @property
    def rss_mib(self) -> float:
        return self.maxrss_kib / 1024

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def brief(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("stdout", "stderr")}
        if not self.ok:
            d["stderr_tail"] = self.stderr[-2000:]
        return d

    def error(self) -> str:
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-3:]
        why = "timed out" if self.timed_out else f"exit {self.rc}"
        return f"{' '.join(self.cmd[:4])}…: {why}: {' | '.join(tail)}"


TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else ""
RSS_METHOD = (
    "peak RSS per command from GNU time (%M)"
    if TIME
    else "peak RSS per command from wait4(); /usr/bin/time is missing (apt-get install time), so the "
    "benchmark's own RSS at spawn time is a floor under every figure"
)


def run_cmd(cmd: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float | None = None) -> Run:
    """Run `cmd` with output to temporary files (no pipe back-pressure), measuring that command alone.

    Peak RSS and CPU come from GNU time when installed. wait4() on our own child is only a fallback:
    Linux carries the pre-exec high-water mark of the (v)forked child, i.e. this script's RSS, into
    ru_maxrss, so a small command would show this script's ~100 MiB.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as tf:
        full = [TIME, "-f", "%M %U %S", "-o", tf.name, *cmd] if TIME else cmd
        t0 = time.perf_counter()
        p = subprocess.Popen(
            full, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        _pid, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        if timer:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        maxrss, user, sys_ = ru.ru_maxrss, ru.ru_utime, ru.ru_stime
        if TIME:
            maxrss, user, sys_ = 0, 0.0, 0.0
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(tf.name).read_text().strip().splitlines()[-1].split()
                maxrss, user, sys_ = int(fields[0]), float(fields[1]), float(fields[2])
        out.seek(0)
        err.seek(0)
        return Run(
            cmd=cmd,
            rc=p.returncode,
            wall_s=wall,
            maxrss_kib=maxrss,
            user_s=user,
            sys_s=sys_,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            timed_out=timed_out.is_set(),
        )


class Caches:
    """Drops the page cache (sync; echo 3 > /proc/sys/vm/drop_caches) before measured commands."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.working: bool | None = None
        self.note = ""
        if not enabled:
            self.note = "page caches NOT dropped (--no-drop-caches)"

    def drop(self) -> None:
        os.sync()
        if not self.enabled or self.working is False:
            return
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            self.working = True
            self.note = (
                "page caches dropped before every measured command (then the tool's own program is "
                "warmed with one `--version` run, so only data is read cold)"
            )
        except OSError as e:
            self.working = False
            self.note = f"page caches NOT dropped ({e.strerror}; run as root outside a container)"


def dir_size(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of all files under `path`."""
    apparent = allocated = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(dirpath, name))
                apparent += st.st_size
                allocated += st.st_blocks * 512
    return apparent, allocated


def json_lines(text: str) -> Iterator[Any]:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("{", "[")):
            with contextlib.suppress(ValueError):
                yield json.loads(line)


def interleave(repeat: int, items: Sequence[T]) -> Iterator[tuple[int, T]]:
    """(repeat, item) with the items taking turns: a, b, c, a, b, c, ... rather than a, a, a, b, ...,
    so that a change in the machine's load during the run hits every item alike."""
    for rep in range(repeat):
        for item in items:
            yield rep, item
