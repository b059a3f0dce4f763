"""Killing prune at any moment loses nothing: the real CLI, stopped at every phase boundary
(BACKUPFS_TEST_CRASH_AT makes it os._exit there, as SIGKILL would) and by SIGKILL at random points.

After each kill: `check --read-data` passes, every kept snapshot restores byte-identical, and a
second prune finishes the job (unused space under the limit, nothing left to delete).
The index-partial phases need index files split in parts; tests/test_prune.py covers them in process.
"""

from __future__ import annotations

import os
import random
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


@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_random_points(scenario: Scenario, tmp_path: Path, seed: int) -> None:
    """Waits for a progress line chosen at random, then kills prune a random few milliseconds later."""
    rng = random.Random(seed)
    _forget_old(scenario)
    triggers = ["unindexed packs", "nothing in use", "writing new index", "repacking", "deleting"]
    trigger = rng.choice(triggers)
    cli = scenario.cli
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupfs", "-r", str(cli.repo), "prune"],
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        for raw in proc.stderr:
            if trigger in raw.decode():
                time.sleep(rng.uniform(0, 0.03))
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode in (-signal.SIGKILL, 0)
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
