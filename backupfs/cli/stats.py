"""`backupfs stats [SNAPSHOT...]`: restore size, stored size and the ratios, as restic stats / borg info."""

from __future__ import annotations

import argparse

from backupfs.cli._common import open_repository
from backupfs.cli._output import human_size, print_json
from backupfs.cli.snapshots import add_filter_args, matches
from backupfs.ops.stats import Stats, collect

MODES = ("restore-size", "files-by-contents", "raw-data")
DESCRIPTION = """\
Adds up the chosen snapshots (all by default, or SNAPSHOT ids and the --host/--tag/--path
filters). Every figure is computed in every mode; --mode picks which one is the headline
total_size (the names and meanings of restic's modes):
  restore-size       bytes a restore of each snapshot would write, added up (hard links once)
  files-by-contents  bytes of the distinct files, a file counted once however often it occurs
  raw-data           bytes the snapshots' distinct chunks and listings take in the repository
Besides: the stored size (compressed and encrypted), the deduplication ratio (restore size per
distinct plaintext byte) and the compression ratio (plaintext per compressed byte).
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "stats",
        help="show sizes, deduplication and compression of snapshots",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="snapshot ids, prefixes or 'latest' (default: all)")
    p.add_argument(
        "--mode", choices=MODES, default="restore-size", help="what total_size counts (default restore-size)"
    )
    add_filter_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_repository(args, lock="shared") as repo:
        everything = repo.list_snapshots()
        if args.snapshots:
            chosen = dict(repo.find_snapshot(ref, everything) for ref in args.snapshots)
            snaps = [(sid, s) for sid, s in chosen.items() if matches(s, args)]
        else:
            snaps = [(sid, s) for sid, s in everything if matches(s, args)]
        stats = collect(repo, [s.tree for _sid, s in snaps])
        repository_size = sum(repo.pack_files().values())
    total_size, total_count, count_name = _headline(stats, args.mode)
    if args.json:
        print_json(
            {
                "mode": args.mode,
                "snapshots_count": stats.snapshots_count,
                "total_size": total_size,
                count_name: total_count,
                "restore_size": stats.restore_size,
                "restore_file_count": stats.restore_entries,
                "unique_files": stats.unique_files,
                "unique_files_size": stats.unique_files_size,
                "data_blobs": stats.data_blobs,
                "tree_blobs": stats.tree_blobs,
                "uncompressed_size": stats.raw_size,
                "data_size": stats.data_size,
                "stored_size": stats.stored_size,
                "deduplication_ratio": round(stats.deduplication_ratio, 4),
                "compression_ratio": round(stats.compression_ratio, 4),
                "compression_space_saving": round(_saving(stats), 2),
                "missing_blobs": stats.missing_blobs,
                "repository_size": repository_size,
            }
        )
        return 0
    label = {"total_file_count": "Total File Count", "total_blob_count": "Total Blob Count"}[count_name]
    rows = [
        ("Snapshots processed", str(stats.snapshots_count)),
        (label, str(total_count)),
        ("Total Size", human_size(total_size)),
        ("", ""),
        ("Restore size", f"{human_size(stats.restore_size)} in {stats.restore_entries} entries"),
        ("Distinct files by content", f"{human_size(stats.unique_files_size)} in {stats.unique_files} files"),
        ("Distinct file content", f"{human_size(stats.data_size)} in {stats.data_blobs} chunks"),
        ("With folder listings", f"{human_size(stats.raw_size)} in {stats.data_blobs + stats.tree_blobs} blobs"),
        ("Stored (compressed)", human_size(stats.stored_size)),
        ("Deduplication ratio", f"{stats.deduplication_ratio:.2f}x"),
        ("Compression ratio", f"{stats.compression_ratio:.2f}x ({_saving(stats):.1f} % saved)"),
        ("All packs in repository", f"{human_size(repository_size)} (incl. data no snapshot uses)"),
    ]
    print(f"Stats in {args.mode} mode:")
    for name, value in rows:
        print(f"{name:>26}:  {value}" if name else "")
    if stats.missing_blobs:
        print(f"warning: {stats.missing_blobs} blobs are in no index (run `backupfs check`)")
    return 0


def _headline(stats: Stats, mode: str) -> tuple[int, int, str]:
    if mode == "files-by-contents":
        return stats.unique_files_size, stats.unique_files, "total_file_count"
    if mode == "raw-data":
        return stats.stored_size, stats.data_blobs + stats.tree_blobs, "total_blob_count"
    return stats.restore_size, stats.restore_entries, "total_file_count"


def _saving(stats: Stats) -> float:
    """Percent of the plaintext that compression saved (restic's compression_space_saving)."""
    compressed = stats.stored_size - stats.envelope_overhead
    return (1 - compressed / stats.raw_size) * 100 if stats.raw_size else 0.0
