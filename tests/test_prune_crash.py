"""Killing prune at any moment loses nothing: the real CLI, stopped at every phase boundary
(BACKUPFS_TEST_CRASH_AT makes it os._exit there, as SIGKILL would) and by SIGKILL at random points.

After each kill: `check --read-data` passes, every kept snapshot restores byte-identical, and a
second prune finishes the job (unused space under the limit, nothing left to delete).
The index-partial phases need index files split in parts; tests/test_prune.py covers them in process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_prune import Scenario, opened, prune_json, scenario, scenario_base, verify_in_process

from backupfs.backends.base import FileType
from backupfs.cli.prune import CRASH_ENV, CRASH_EXIT
from backupfs.prune.execute import PHASES, execute
from backupfs.prune.plan import plan_prune

__all__ = ["scenario", "scenario_base"]  # fixtures shared with test_prune

PIPE_MIN = 4096  # the smallest pipe buffer Linux allows (one page)
CLI_PHASES = [p for p in PHASES if not p.endswith(":index-partial")]


def _forget_old(sc: Scenario) -> None:
    """What `forget S1 S2` does, without starting the CLI once more."""
    for sid in (sc.s1, sc.s2):
        (sc.cli.repo / FileType.SNAPSHOT.value / sid).unlink()


def _finish_and_verify(sc: Scenario, tmp_path: Path, *, cli: bool) -> None:
    verify_in_process(sc.cli.repo, sc.kept, tmp_path)
    # The killed run's lock is stale (dead process) and ignored. In process saves a CLI start.
    if cli:
        out = prune_json(sc.cli)
    else:
        with opened(sc.cli.repo, load_index=False) as repo:
            repo.lock(exclusive=True)
            out = dict(execute(plan_prune(repo)).as_dict())
    assert out["unused_after"] <= 0.05 * (out["used_bytes"] + out["unused_after"])
    verify_in_process(sc.cli.repo, sc.kept, tmp_path)
    with opened(sc.cli.repo, load_index=False) as repo:
        plan = plan_prune(repo)
    assert not plan.delete and not plan.repack and not plan.unindexed and not plan.obsolete_index_files
    assert plan.stats.unused_bytes <= 0.05 * (plan.stats.used_bytes + plan.stats.unused_bytes)
    # (a killed writer may leave a temporary file; the next writer removes it once a day old)
    assert len([p for p in (sc.cli.repo / "index").iterdir() if not p.name.startswith(".")]) == 1


@pytest.mark.parametrize("phase", CLI_PHASES)
def test_exit_at_phase_boundary(scenario: Scenario, tmp_path: Path, phase: str) -> None:
    _forget_old(scenario)
    proc = scenario.cli("prune", check=False, env={CRASH_ENV: phase})
    assert proc.returncode == CRASH_EXIT, proc.stderr.decode()
    _finish_and_verify(scenario, tmp_path, cli=False)


# Where the random kills aim: a progress line prune prints in this scenario (a pattern for the whole
# line, and which occurrence of it; pack counts vary with the repository's chunker key). Each is
# asserted to be seen, so a line prune stops printing fails the test instead of turning it into a
# kill at exit.
KILL_POINTS = [
    (r"finding data in use by 2 snapshots", 1),
    (r"deleting 1 unindexed packs", 1),
    (r"deleting \d+ packs with nothing in use", 1),
    (r"writing new index", 1),
    (r"deleting \d+ packs", 1),
    (r"repacking \d+ packs", 1),
    (r"writing new index", 2),
    (r"deleting \d+ packs", 2),  # the last line: the repacked packs go
]
_POLL = 1.0  # seconds between looks at what prune waits for while it prints nothing
_GUARD = 300.0  # seconds without a line before the test gives up (a hang guard, as CLI.run's)


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full: a process given its write end as stdout blocks on its
    first flush, so prune (which prints only its summary to stdout, after the last step) cannot exit
    before the test kills it."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_MIN)
    os.set_blocking(w, False)
    for size in (PIPE_MIN, 1):  # then byte by byte: not one byte of room may remain
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, b"x" * size)
    os.set_blocking(w, True)
    return r, w


def _blocked_on_stdout(pid: int) -> bool:
    """Whether prune's main thread waits to write into a full pipe: with stderr drained, that is
    stdout, which it writes only when it has finished (the kernel names the wait in wchan)."""
    return "pipe_write" in Path(f"/proc/{pid}/wchan").read_text()


def _wait_for(proc: subprocess.Popen[bytes], pattern: str, nth: int) -> None:
    """Returns once prune has printed the nth line matching `pattern`; fails as soon as prune is
    seen to have finished without printing it."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    buf, lines, seen, quiet = b"", [], 0, 0.0
    while True:
        ready, _w, _x = select.select([fd], [], [], _POLL)
        if not ready:
            quiet += _POLL
            assert not _blocked_on_stdout(proc.pid) and quiet < _GUARD, f"{pattern!r} (#{nth}) not printed: {lines}"
            continue
        quiet = 0.0
        data = os.read(fd, 4096)
        assert data, f"prune ended its stderr without printing {pattern!r} (#{nth}): {lines}"
        buf += data
        *done, buf = buf.split(b"\n")
        for raw in done:
            lines.append(raw.decode())
            seen += re.fullmatch(pattern, lines[-1]) is not None
            if seen == nth:
                return


@pytest.mark.parametrize(("pattern", "nth"), KILL_POINTS, ids=[f"{t}#{n}" for t, n in KILL_POINTS])
def test_sigkill_at_random_points(scenario: Scenario, tmp_path: Path, pattern: str, nth: int) -> None:
    """Waits for a progress line, then SIGKILLs prune a random few milliseconds later: the kill
    always lands (prune cannot exit on its own, see _full_pipe), wherever the machine's load has let it get to."""
    rng = random.Random(f"{pattern}#{nth}")
    _forget_old(scenario)
    cli = scenario.cli
    out_r, out_w = _full_pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupfs", "-r", str(cli.repo), "prune"],
        env=cli.env,
        stdout=out_w,
        stderr=subprocess.PIPE,
    )
    os.close(out_w)
    try:
        _wait_for(proc, pattern, nth)
        time.sleep(rng.uniform(0, 0.03))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        os.close(out_r)
    assert proc.returncode == -signal.SIGKILL
    _finish_and_verify(scenario, tmp_path, cli=True)


def test_only_the_cli_reads_the_crash_variable() -> None:
    """A program that calls the library is never stopped by BACKUPFS_TEST_CRASH_AT: the CLI reads it
    and passes a hook (test_exit_at_phase_boundary shows that it does)."""
    script = (
        "import test_prune as t\n"
        "from backupfs.prune.execute import execute\n"
        "from backupfs.prune.plan import plan_prune\n"
        "m = t._mem_scenario()\n"
        "repo = m.open(load_index=False)\n"
        "repo.lock(exclusive=True)\n"
        "stats = execute(plan_prune(repo))\n"
        "repo.close()\n"
        "m.verify()\n"
        "print(stats.delete_packs, stats.executed)\n"
    )
    tests = Path(__file__).parent
    path = os.pathsep.join([str(tests), str(tests.parent / "tools")])  # test_prune imports the support package
    env = {**os.environ, CRASH_ENV: "planned", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tests, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    deleted, executed = proc.stdout.decode().split()
    assert int(deleted) > 0 and executed == "True"
