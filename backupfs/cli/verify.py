"""`backupfs verify`: a restore drill, or (`--status`) when the last one was and how it went."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import time
from collections.abc import Callable

from backupfs.backends.base import FileType
from backupfs.cli._common import cache_dir, format_time, iso_time, open_repository
from backupfs.cli._output import err, human_size, print_json
from backupfs.cli._progress import Progress, drill_figures
from backupfs.cli._quote import escape, json_name
from backupfs.cli.mount import check_fuse_available
from backupfs.errors import BackupfsError, IntegrityError, UsageError
from backupfs.format.snapshot import Snapshot
from backupfs.format.verifyrecord import MOUNT, RESTORE, VerifyRecord
from backupfs.ops.drillsample import Budget, draw, load_history
from backupfs.ops.drillsource import FolderSource, RestoreSource, scratch_folder
from backupfs.ops.verify import Drill, DrillOptions, DrillProgress, DrillResult
from backupfs.prune.options import parse_size
from backupfs.repository.repo import Repository

EXIT_STALE = 5  # --status: no successful drill, or none within --max-age (architecture.md 2)
SEED_BITS = 63
DAY = 86400.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}


class StaleDrill(BackupfsError):
    exit_code = EXIT_STALE


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "verify",
        help="restore a sample of files and check them (a restore drill)",
        description="Restores a random sample of files, weighted by size and preferring packs no drill has read "
        "lately, and checks each against its whole-file hash, size and metadata (docs/verify.md).",
    )
    p.add_argument("snapshot", nargs="*", help="snapshot ids or 'latest' (default: the newest of each host and paths)")
    p.add_argument("--all", action="store_true", help="sample from every snapshot")
    size = p.add_argument_group("sample size (default: 1G)")
    size.add_argument("--sample", metavar="P%", help="this share of the sampled snapshots' bytes, e.g. 5%%")
    size.add_argument("--max-bytes", metavar="SIZE", help="at most this many bytes, e.g. 2G")
    size.add_argument("--files", type=int, metavar="N", help="at most N files")
    p.add_argument("--max-duration", metavar="DURATION", help="stop after this long, e.g. 10m, 1h30m")
    p.add_argument("--seed", type=int, help="draw the sample of an earlier drill again")
    p.add_argument("--through-mount", action="store_true", help="read the files through a backupfs mount")
    p.add_argument("--compare-source", action="store_true", help="also compare with live files unchanged since")
    p.add_argument("--exec", dest="exec_command", metavar="CMD", help="run CMD on each file ({} is its path)")
    p.add_argument("--scratch", metavar="DIR", help="restore into a folder made here (default: the cache folder)")
    p.add_argument("--status", action="store_true", help="show the last drill and coverage; exit 4 or 5 if bad")
    p.add_argument("--max-age", metavar="DURATION", help="with --status: exit 5 if no good drill this recent")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.status:
        drill_options = (args.sample, args.max_bytes, args.files, args.max_duration, args.seed, args.exec_command)
        if (
            args.snapshot
            or args.all
            or args.through_mount
            or args.compare_source
            or args.scratch
            or any(option is not None for option in drill_options)
        ):
            raise UsageError("--status takes no snapshots and no drill options")
        return _status(args, parse_duration(args.max_age) if args.max_age else None)
    if args.max_age:
        raise UsageError("--max-age goes with --status")
    if args.all and args.snapshot:
        raise UsageError("give snapshots or --all, not both")
    budget = _budget(args)
    max_duration = parse_duration(args.max_duration) if args.max_duration else None
    if args.seed is not None and not 0 <= args.seed < 1 << SEED_BITS:
        raise UsageError(f"--seed must be between 0 and {(1 << SEED_BITS) - 1}")
    if args.exec_command is not None and "{}" not in args.exec_command:
        raise UsageError("--exec needs {} where the file's path goes")
    if args.through_mount:
        check_fuse_available()
    quiet = args.quiet or args.json
    with open_repository(args, lock="shared") as repo, scratch_folder(args.scratch or cache_dir(args)) as scratch:
        history = load_history(repo, lambda m: err(f"warning: {m}"))
        snapshots, damaged = _chosen(repo, args)
        seed = args.seed if args.seed is not None else secrets.randbits(SEED_BITS)
        earlier = history.with_seed(seed) if args.seed is not None else None
        now = earlier.start_ns if earlier is not None else time.time_ns()
        state = history.before(earlier.start_ns) if earlier is not None else history
        if not quiet:
            err(f"drawing a sample from {len(snapshots)} snapshots (seed {seed})")
        plan = draw(repo, snapshots, budget, seed, state.pack_times(), now)
        plan.problems += damaged
        if not quiet:
            err(f"verifying {len(plan.samples)} of {plan.population_files} files, {human_size(plan.planned_bytes)}")
        options = DrillOptions(
            method=MOUNT if args.through_mount else RESTORE,
            max_duration=max_duration,
            compare_source=args.compare_source,
            exec_command=args.exec_command,
        )
        latest: list[DrillProgress] = []  # what the drill last reported, read by the progress thread

        def report(p: DrillProgress) -> None:
            latest[:] = [p]

        drill = Drill(repo, options, report)
        figures = drill_figures(lambda: latest[0] if latest else None, len(plan.samples), plan.planned_bytes)
        with Progress(args.quiet, args.json, figures):
            if args.through_mount:
                result = _through_mount(repo, scratch, lambda source: drill.run(plan, source))
            else:
                result = drill.run(plan, RestoreSource(repo, scratch))
        record_id = _save(repo, result.record())
    _report(args, result, plan.population_files, plan.population_bytes, plan.too_large, record_id)
    if result.failures:
        raise IntegrityError(f"verify: {len(result.failures)} of the sampled files failed")
    return 0


def _budget(args: argparse.Namespace) -> Budget:
    share = None
    if args.sample is not None:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", args.sample)
        if m is None or not 0 < float(m.group(1)) <= 100:
            raise UsageError(f"invalid --sample {args.sample!r} (use e.g. 5%)")
        share = float(m.group(1)) / 100
    max_bytes = parse_size(args.max_bytes) if args.max_bytes is not None else None
    if max_bytes is not None and max_bytes <= 0:
        raise UsageError("--max-bytes must be positive")
    if args.files is not None and args.files <= 0:
        raise UsageError("--files must be positive")
    return Budget(files=args.files, max_bytes=max_bytes, share=share)


def parse_duration(text: str) -> float:
    """`90s`, `10m`, `1h30m`, `7d` (s, m for minutes, h, d); seconds."""
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise UsageError(f"invalid duration {text!r} (use e.g. 90s, 10m, 1h30m, 7d)")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise UsageError(f"invalid duration {text!r}: it must be positive")
    return seconds


def _chosen(
    repo: Repository, args: argparse.Namespace
) -> tuple[list[tuple[str, Snapshot]], list[tuple[str, bytes, str]]]:
    """The snapshots to sample from, newest first, and a problem for each snapshot file that cannot
    be read (a snapshot that cannot be restored; named ones must be readable)."""
    damaged: list[tuple[str, bytes, str]] = []

    def unreadable(name: str, exc: IntegrityError) -> None:
        damaged.append((name, b"/", f"the snapshot file cannot be read: {exc}"))

    every = repo.list_snapshots(on_damaged=unreadable)
    if args.snapshot:
        named = {sid: snap for sid, snap in (repo.find_snapshot(ref, every) for ref in args.snapshot)}
        chosen = list(named.items())
    elif args.all:
        chosen = every
    else:
        newest: dict[tuple[str, tuple[str, ...]], tuple[str, Snapshot]] = {}
        for sid, snap in every:  # oldest first: the last one of each group stays
            newest[(snap.host, tuple(sorted(snap.paths)))] = (sid, snap)
        chosen = list(newest.values())
    if not chosen and not damaged:
        raise UsageError("the repository has no snapshots")
    return sorted(chosen, key=lambda p: (p[1].time_ns, p[0]), reverse=True), damaged


def _through_mount(repo: Repository, scratch: str, job: Callable[[FolderSource], DrillResult]) -> DrillResult:
    """Mounts the repository in the scratch folder and runs the drill on the files it shows."""
    try:
        from backupfs.mount import lifecycle  # trio and pyfuse3: only for this option
    except ImportError as exc:
        raise BackupfsError(f"FUSE is not available: {exc}") from exc
    mountpoint = os.path.join(scratch, "mnt")
    os.mkdir(mountpoint, 0o700)
    ids = os.path.join(mountpoint, "ids")

    roots: dict[str, str] = {}

    def root_of(sid: str) -> str:
        if sid not in roots:
            names = [n for n in os.listdir(ids) if sid.startswith(n)]  # 8 hex digits, more if two share them
            if not names:
                raise FileNotFoundError(f"snapshot {sid[:8]} is not in the mount")
            roots[sid] = os.path.join(ids, names[0])
        return roots[sid]

    return lifecycle.run_task(repo, mountpoint, lifecycle.MountOptions(), lambda: job(FolderSource(root_of)))


def _save(repo: Repository, record: VerifyRecord) -> str | None:
    """Stores the drill's record; one that cannot be stored (a read-only or older server) is a
    warning: the drill happened, and `verify --status` will say no record is recent."""
    try:
        return repo.save_verify_record(record)
    except BackupfsError as exc:
        err(f"warning: the result could not be recorded in the repository: {exc}")
        return None


def _report(
    args: argparse.Namespace, result: DrillResult, population: int, population_bytes: int, too_large: int,
    record_id: str | None,
) -> None:  # fmt: skip
    elapsed = (result.end_ns - result.start_ns) / 1e9
    for w in result.warnings:  # on stderr with --json too, as every command's messages
        err(f"warning: {w}")
    for f in result.failures:
        err(f"error: {f.text()}")
    if args.json:
        print_json(
            {
                "message_type": "summary",
                "ok": result.ok,
                "seed": result.seed,
                "method": result.method,
                "files_verified": result.files,
                "bytes_verified": result.nbytes,
                "files_failed": len(result.failures),
                "failures": [
                    {"snapshot_id": f.sid, **json_name("path", f.path), "what": escape(f.what)} for f in result.failures
                ],
                "warnings": [escape(w) for w in result.warnings],
                "files_checked_by_chunk": result.chunk_checked,
                "sources_compared": result.sources_compared,
                "sources_changed": result.sources_changed,
                "commands_run": result.commands_run,
                "stopped_at_max_duration": result.stopped_early,
                "files_not_reached": result.unchecked,
                "population_files": population,
                "population_bytes": population_bytes,
                "files_larger_than_budget": too_large,
                "packs_read": len(result.packs),
                "record_id": record_id,
                "duration_seconds": round(elapsed, 3),
            }
        )
        return
    if args.quiet:
        return
    rate = f", {human_size(result.nbytes / elapsed)}/s" if elapsed > 0 else ""
    print(
        f"verified {result.files} files, {human_size(result.nbytes)} in {elapsed:.1f}s{rate} "
        f"({result.method}, seed {result.seed}); {len(result.failures)} failed"
    )
    if result.chunk_checked:
        print(
            f"{result.chunk_checked} files had no whole-file hash (older or copied snapshots): checked chunk by chunk"
        )
    if args.compare_source:
        print(
            f"compared {result.sources_compared} files with their live source ({result.sources_changed} changed since)"
        )
    if result.stopped_early:
        print(f"stopped at --max-duration: {result.unchecked} sampled files not reached")
    if too_large:
        print(f"{too_large} files are larger than the sample size and cannot be drawn with it")


def _status(args: argparse.Namespace, max_age: float | None) -> int:
    with open_repository(args, lock="shared", load_index=False) as repo:
        history = load_history(repo, lambda m: err(f"warning: {m}"))
        packs = {bytes.fromhex(name): size for name, size in repo.backend.list(FileType.DATA)}
    now = time.time_ns()
    last, last_ok = history.last(), history.last_ok()
    week, month = (history.coverage(packs, now - int(days * DAY * 1e9)) for days in (7, 30))
    problem: BackupfsError | None = None
    if last is None:
        problem = StaleDrill("no restore drill is recorded (run `backupfs verify`)")
    elif not last.ok:
        problem = IntegrityError(f"the last drill, at {format_time(last.end_ns)}, found {last.failed} failures")
    elif max_age is not None and last_ok is not None and (now - last_ok.end_ns) / 1e9 > max_age:
        problem = StaleDrill(f"the last successful drill is older than {args.max_age} ({format_time(last_ok.end_ns)})")
    if args.json:
        print_json(
            {
                "message_type": "verify_status",  # not "status": that is a progress line
                "ok": problem is None,
                "drills": len(history.records),
                "last": _record_json(last),
                "last_successful": _record_json(last_ok),
                "coverage_7d": round(week, 4),
                "coverage_30d": round(month, 4),
            }
        )
    elif not args.quiet:
        print(f"{len(history.records)} drills recorded")
        if last is not None:
            verdict = "passed" if last.ok else f"FAILED ({last.failed} files)"
            print(
                f"last drill: {format_time(last.end_ns)} on {escape(last.host)}, {last.files} files, "
                f"{human_size(last.nbytes)} ({last.method}): {verdict}"
            )
            for line in last.problems:
                print(f"  {escape(line)}")
        if last_ok is not None and last_ok is not last:
            print(f"last successful drill: {format_time(last_ok.end_ns)}")
        print(f"packs read by drills: {week:.1%} of the bytes in the last 7 days, {month:.1%} in 30 days")
    if problem is not None:
        raise problem
    return 0


def _record_json(record: VerifyRecord | None) -> dict[str, object] | None:
    if record is None:
        return None
    return {
        "time": iso_time(record.end_ns),
        "hostname": record.host,
        "ok": record.ok,
        "method": record.method,
        "files": record.files,
        "bytes": record.nbytes,
        "failed": record.failed,
        "problems": [escape(p) for p in record.problems],
        "seed": record.seed,
    }
