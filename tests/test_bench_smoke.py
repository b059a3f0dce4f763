"""Smoke test of tools/bench.py: the whole benchmark end to end on tiny corpora, so it cannot rot.

Not a benchmark and not a timing test: no figure is judged (timings on a shared machine mean
nothing). It checks that every section ran to its end with every installed tool, that every row
has a number for every tool, that the restores and the mount matched the source, and that the
JSON report has the schema tools/benchlib/report.py documents.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.smoke, pytest.mark.slow]

BENCH = Path(__file__).resolve().parent.parent / "tools" / "bench.py"
CAN_MOUNT = os.path.exists("/dev/fuse") and os.geteuid() == 0
SCHEMA = ("backupfs-bench", 2)
# The mixed tree (MiB/s rows, the large file's cp), the real tree (the copy of /usr) and the tiny
# one (a subset read through the mount) cover every code path; the small tree differs from the
# tiny one only in its generator, and each tree costs every tool four commands per section.
TREES = ("mixed", "real", "tiny")
# The part of the machine the real tree copies: /usr/include alone keeps the walk short.
REAL_FROM = "/usr/include"


def stats_ok(stats: dict[str, Any]) -> bool:
    return (
        stats["n"] >= 1
        and stats["failed"] == 0
        and stats["min"] <= stats["median"] <= stats["max"]
        and len(stats["samples"]) == stats["n"]
    )


def bench(work: Path, tools: list[str], sections: list[str], *options: str) -> tuple[dict[str, Any], str]:
    """Runs tools/bench.py on tiny corpora: its JSON report (the Markdown one checked) and its log."""
    cmd = [
        sys.executable,
        str(BENCH),
        "--work",
        str(work),
        "--results",
        str(work / f"results-{len(list(work.glob('results-*')))}"),
        "--scale",
        "0.001",
        "--real-tree-from",
        REAL_FROM,
        "--no-drop-caches",
        "--timeout",
        "120",
        "--tools",
        ",".join(tools),
        "--only",
        ",".join(sections),
        *options,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [report] = Path(cmd[cmd.index("--results") + 1]).glob("bench-*.json")
    assert report.with_suffix(".md").read_text().count("\n### ") == len(sections)
    data: dict[str, Any] = json.loads(report.read_text())
    assert (data["schema"], data["schema_version"]) == SCHEMA
    assert [s["name"] for s in data["sections"]] == sections
    assert list(data["meta"]["versions"]) == tools
    return data, proc.stderr


def check_rows(data: dict[str, Any], tools: list[str], repeat: int, trees: tuple[str, ...]) -> None:
    """Every row has `repeat` figures (median, min, max) for every tool, and ratios of medians."""
    for sec in data["sections"]:
        bad = ("abort", "WRONG", "FAILED", "failed", "expected")
        assert not [n for n in sec["notes"] if any(b in n for b in bad)], sec["notes"]
        assert sec["rows"], sec["name"]
        for row in sec["rows"]:
            assert row["better"] in ("higher", "lower")
            assert set(row["tools"]) == set(tools), (sec["name"], row["metric"])
            for tool, stats in row["tools"].items():
                if "program cold" in row["metric"]:  # not measured: caches are not dropped here
                    assert stats["n"] == stats["failed"] == 0 and stats["note"].startswith("n/a"), stats
                    continue
                assert stats_ok(stats), (sec["name"], row["metric"], tool, stats)
                if not row["metric"].startswith("incremental backup"):  # one figure per snapshot made
                    assert stats["n"] == repeat, (sec["name"], row["metric"], tool, stats)
            assert set(row["ratios"]) == {f"backupfs/{t}" for t in tools[1:]}
            b = row["tools"]["backupfs"]["median"]
            for t in tools[1:]:
                o = row["tools"][t]["median"]
                assert row["ratios"][f"backupfs/{t}"] == (pytest.approx(b / o) if o and b is not None else None)
        if sec["name"] != "prune":  # the prune section has a tree of its own
            assert {row["tree"] for row in sec["rows"]} >= set(trees), sec["name"]


@pytest.mark.skipif(not os.path.isdir(REAL_FROM), reason=f"{REAL_FROM} is missing (install gcc or libc6-dev)")
def test_bench_runs_end_to_end_and_reports_every_figure(tmp_path: Path) -> None:
    tools = ["backupfs", *(t for t in ("restic", "borg") if shutil.which(t))]
    work = tmp_path / "work"
    # 1. backup, restore and mount of three trees, once each
    sections = ["backup", "restore", *(["mount"] if CAN_MOUNT else [])]
    data, _ = bench(work, tools, sections, "--repeat", "1", "--trees", ",".join(TREES))
    meta = data["meta"]
    assert meta["repeat"] == 1 and meta["trees"] == list(TREES)
    for name in TREES:
        c = meta["corpus"][name]
        assert c["files"] > 0 and c["folders"] > 0 and c["bytes"] > 0 and c["symlinks"] >= 0, (name, c)
    real = meta["corpus"]["real"]
    assert real["sources"] == [REAL_FROM] and real["copy_errors"] == 0 and len(real["manifest_sha256"]) == 64
    check_rows(data, tools, 1, TREES)
    if CAN_MOUNT:
        [mount] = [s for s in data["sections"] if s["name"] == "mount"]
        rsync = [c for c in mount["commands"] if "rsync_differences" in c]
        assert len(rsync) == len(tools) * (len(TREES) - 1)  # every tree of files, not the mixed one
        assert not [c for c in rsync if c["tool"] == "backupfs" and c["rsync_differences"]], rsync

    # 2. check and verify (of the repositories run 1 left) and prune, twice each, the tools taking turns
    data, log = bench(
        work,
        tools,
        ["check", "prune", "verify"],
        "--repeat",
        "2",
        "--trees",
        "tiny",
        "--prune-steps",
        "2",
        "--keep-last",
        "1",
    )
    check_rows(data, tools, 2, ("tiny",))
    [check] = [s for s in data["sections"] if s["name"] == "check"]
    assert [(c["repeat"], c["tool"]) for c in check["commands"]] == [(rep, t) for rep in (0, 1) for t in tools]
    assert "preparing" not in log  # the repositories run 1 left were used, not made again
