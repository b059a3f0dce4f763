"""A measured session of a tool's FUSE mount, and the helpers around mount processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.adapters import Tool
from benchlib.core import Bench
from benchlib.runner import log, run_cmd


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


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds process `pid` has used so far (None once it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def start_mount(
    bench: Bench, tool: Tool, repo: Path, mnt: Path, target: Path, logf: Path
) -> tuple[subprocess.Popen[bytes], float, float]:
    """Starts `tool`'s mount of `repo`; returns once listing `target` inside it succeeds:
    (process, seconds until the mount point was live, seconds until the listing answered)."""
    unmount(mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    with open(logf, "ab") as lf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(tool.mount(repo, mnt), stdout=lf, stderr=lf, stdin=subprocess.DEVNULL, env=tool.env())
    try:
        deadline = t0 + min(bench.timeout, 600)
        mounted_at = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mount exited with {proc.returncode}: {tail(logf)}")
            if time.perf_counter() > deadline:
                raise RuntimeError("no answer from the mount within the time limit")
            if os.path.ismount(mnt):
                mounted_at = mounted_at or time.perf_counter()
                try:
                    if os.listdir(target):
                        break
                except FileNotFoundError:
                    if time.perf_counter() - mounted_at > 30:
                        raise RuntimeError(
                            f"{target} not found in the mount; its root has {sorted(os.listdir(mnt))[:10]}"
                        ) from None
                except OSError:
                    pass
            time.sleep(0.002)
    except BaseException:
        stop_mount(proc, mnt, [])
        raise
    return proc, (mounted_at or t0) - t0, time.perf_counter() - t0


def stop_mount(proc: subprocess.Popen[bytes], mnt: Path, errors: list[str]) -> None:
    unmount(mnt)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errors.append("mount process did not exit after unmount; had to be signalled")
    unmount(mnt)
    if os.path.ismount(mnt):
        errors.append("mount point still mounted after the process ended")


def warm_repo(bench: Bench, tool: Tool) -> tuple[Path, str, Path]:
    """A one-file repository of `tool`, mounted before the measured mount so that the
    program (interpreter, modules, libraries, FUSE binding) is read from disk beforehand
    and only the measured repository's data is cold."""
    src = bench.work / "warm-src"
    if not src.exists():
        src.mkdir(parents=True)
        (src / "hello.txt").write_text("hello\n")
    repo = bench.repo(tool, "warm")
    marker = repo.parent / f"{tool.name}.snapshot"
    if repo.exists() and marker.exists():
        return repo, marker.read_text().strip(), src
    bench.fresh_repo(tool, "warm")
    r = run_cmd(tool.backup(repo, src, "warm"), tool.env(), timeout=600)
    if not r.ok:
        raise RuntimeError(f"{tool.name} backup of the warm-up repository failed: {r.error()}")
    snap = tool.snapshot_id(r, "warm")
    marker.write_text(snap)
    return repo, snap, src


@dataclass
class Step:
    """One command run through a live mount: `key` names its figures in the session's result."""

    key: str
    cmd: list[str]
    differences: bool = False  # its stdout lists differences (rsync --itemize-changes): count them


def mount_session(
    bench: Bench, tool: Tool, repo: Path, mnt: Path, ls_target: Path, steps: list[Step]
) -> dict[str, Any]:
    """One measured session of `tool`'s mount of `repo`, as a dict of figures:

    - first_ls_cold_s: start to the first listing of `ls_target`, caches dropped and the program
      warmed only by `--version` (as after a reboot; a Python program then reads its modules);
    - mounted_s, first_ls_s: the same with the program warm (a one-file repository of the same tool
      mounted first), only the repository's data cold;
      when page caches are not dropped nothing is cold, so neither the cold mount nor the warm-up
      runs (no first_ls_cold_s);
    - <key>_s, <key>_daemon_cpu_s (and <key>_differences) for each step, caches dropped before each;
    - vmhwm_mib: the mount process's peak RSS; errors: what went wrong on the way.
    """
    res: dict[str, Any] = {"errors": []}
    env = tool.env()
    logf = mnt.parent / f"{tool.name}.log"
    logf.unlink(missing_ok=True)
    bench.caches.drop()
    if bench.caches.working:
        tool.warm()
        proc, _, res["first_ls_cold_s"] = start_mount(bench, tool, repo, mnt, ls_target, logf)
        stop_mount(proc, mnt, res["errors"])
        log(f"  {tool.name:8} first ls after {res['first_ls_cold_s']:.3f} s (program cold too)")
        bench.caches.drop()
        tool.warm()
        warm, warm_snap, warm_src = warm_repo(bench, tool)
        proc, _, _ = start_mount(bench, tool, warm, mnt, tool.path_in_mount(mnt, warm_snap, warm_src), logf)
        stop_mount(proc, mnt, res["errors"])
    bench.load_sample()
    proc, res["mounted_s"], res["first_ls_s"] = start_mount(bench, tool, repo, mnt, ls_target, logf)
    try:
        log(f"  {tool.name:8} first ls after {res['first_ls_s']:.3f} s (program warm)")
        for step in steps:
            bench.caches.drop()
            bench.load_sample()
            cpu0 = proc_cpu_s(proc.pid)
            r = run_cmd(step.cmd, env, timeout=bench.timeout)
            cpu1 = proc_cpu_s(proc.pid)
            log(f"  {tool.name:8} {step.key:10} {r.wall_s:8.2f} s  {'ok' if r.ok else r.error()}")
            if not r.ok:
                res["errors"].append(f"{step.key}: {r.error()}")
                continue
            if r.stderr.strip():
                res["errors"].append(f"{step.key}: {r.stderr.strip().splitlines()[-1]}")
            res[f"{step.key}_s"] = r.wall_s
            if cpu0 is not None and cpu1 is not None:
                res[f"{step.key}_daemon_cpu_s"] = cpu1 - cpu0
            if step.differences:
                res[f"{step.key}_differences"] = len(r.stdout.splitlines())
        res["vmhwm_mib"] = vmhwm_mib(proc.pid)
    finally:
        stop_mount(proc, mnt, res["errors"])
    return res
