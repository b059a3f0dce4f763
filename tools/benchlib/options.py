"""The command-line options of tools/bench.py (and those tools/bench_remote.py shares)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from benchlib.adapters import TOOLS
from benchlib.realtree import DEFAULT_SOURCES
from benchlib.trees import TREES

SECTIONS = ("backup", "restore", "check", "mount", "prune", "verify")
DEFAULT_REPEAT = 3


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def add_common_arguments(
    p: argparse.ArgumentParser,
    *,
    work: Path,
    scale_help: str,
    sections: Sequence[str],
    tools: Sequence[str],
    timeout: float,
) -> None:
    """The options every benchmark script takes (tools/bench_remote.py too)."""
    p.add_argument("--work", type=Path, default=work, help="work directory (default %(default)s)")
    p.add_argument("--scale", type=float, default=1.0, help=scale_help)
    p.add_argument("--seed", type=int, default=1, help="corpus seed (default %(default)s)")
    p.add_argument(
        "--only",
        default=",".join(sections),
        type=_list,
        help=f"comma-separated sections to run (default: all of {','.join(sections)})",
    )
    p.add_argument(
        "--tools",
        default=",".join(tools),
        type=_list,
        help="comma-separated tools (default: %(default)s)",
    )
    p.add_argument("--backupfs", help="backupfs executable (default: next to this Python, else on PATH)")
    p.add_argument(
        "--backupfs-compression",
        default="lz4",
        metavar="SPEC",
        help="backupfs init --compression: lz4 (default, borg's codec here), zstd[:LEVEL] (restic's) or none",
    )
    p.add_argument("--no-drop-caches", action="store_true", help="do not drop page caches before measured commands")
    p.add_argument(
        "--prune-steps", type=int, default=20, help="snapshots made before forget/prune (default %(default)s)"
    )
    p.add_argument("--keep-last", type=int, default=5, help="snapshots kept by forget (default %(default)s)")
    p.add_argument(
        "--timeout", type=float, default=timeout, help="limit for any one command, seconds (default %(default)s)"
    )
    p.add_argument("--results", type=Path, help="directory for the JSON and Markdown results (default WORK/results)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(
        p,
        work=Path("/var/tmp/backupfs-bench"),
        scale_help="size factor of the generated trees: 1 = 2 GiB mixed, 100k small files, 400k tiny files; "
        "0.05 for a quick run, 0.001 for a smoke test",
        sections=SECTIONS,
        tools=TOOLS,
        timeout=3600,
    )
    p.add_argument(
        "--borg-encryption",
        default="repokey",
        choices=["repokey", "repokey-blake2"],
        help="borg init mode (default %(default)s: HMAC-SHA256 is faster than BLAKE2b on CPUs with SHA extensions)",
    )
    p.add_argument(
        "--keep-repos",
        action="store_true",
        help="keep the prune repositories (the main ones are always kept for --only reruns)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=DEFAULT_REPEAT,
        metavar="N",
        help="run every measurement N times, the tools taking turns, and report median, min and max "
        "(default %(default)s)",
    )
    p.add_argument(
        "--trees",
        default=",".join(TREES),
        type=_list,
        help="comma-separated corpus trees the backup, restore, check and mount sections use "
        "(default: all of %(default)s)",
    )
    p.add_argument(
        "--real-tree-scale",
        type=float,
        metavar="F",
        help="share of the real tree's folders to copy, a deterministic subset by sorted path "
        "(default: --scale, at most 1)",
    )
    p.add_argument(
        "--real-tree-from",
        default=",".join(DEFAULT_SOURCES),
        type=_list,
        metavar="DIR,DIR",
        help="the folders the real tree copies (default %(default)s)",
    )
    args = p.parse_args(argv)
    check_common_arguments(p, args, sections=SECTIONS, tools=TOOLS, max_scale=4)
    bad = [t for t in args.trees if t not in TREES]
    if bad or not args.trees:
        p.error(f"unknown tree(s) {bad}; choose from {TREES}")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.real_tree_scale is not None and not 0 < args.real_tree_scale <= 1:
        p.error("--real-tree-scale must be in (0, 1]")
    bad = [d for d in args.real_tree_from if not Path(d).is_absolute()]
    if bad:
        p.error(f"--real-tree-from: not an absolute path: {', '.join(bad)}")
    return args


def check_common_arguments(
    p: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    sections: Sequence[str],
    tools: Sequence[str],
    max_scale: float,
) -> None:
    """Rejects unknown sections and tools and an out-of-range scale (exits with usage)."""
    bad = [s for s in args.only if s not in sections]
    if bad:
        p.error(f"unknown section(s) {bad}; choose from {sections}")
    bad = [t for t in args.tools if t not in tools]
    if bad:
        p.error(f"unknown tool(s) {bad}; choose from {tools}")
    if not 0 < args.scale <= max_scale:
        p.error(f"--scale must be in (0, {max_scale:g}]")
