"""References to blobs of the wrong type: a file's chunk that is a folder listing, a folder's
listing that is file data (issue 10). Every pack is intact, so only the blob types tell."""

from __future__ import annotations

from pathlib import Path

from hostile import Forge, assert_clean
from mounting import Cli


def test_check_reports_references_to_blobs_of_the_wrong_type(tmp_path: Path) -> None:
    """A file's chunk that is a folder listing, a folder's listing that is file data: every
    pack is intact, so only the blob types tell (this check said "no errors")."""
    cli = Cli(tmp_path)
    f = Forge(cli.repo)
    try:
        tree_blob = f.tree([f.file(b"inside", b"inside\n")])
        data_blob = f.data(b"plain file data, not a listing\n")
        sid = f.snapshot(
            [
                f.folder(b"data_as_listing", [], st=data_blob),
                f.file(b"fine", b"fine\n"),
                f.file(b"tree_as_chunk", b"", s=100, c=[[0, tree_blob]]),
            ]
        )
    finally:
        f.close()
    for args in (["check"], ["check", "--read-data"]):
        proc = cli(*args, check=False)
        assert proc.returncode == 4
        assert_clean(proc.stderr)
        fix = f" (fix: `backupfs repair snapshots {sid[:8]}`)"
        assert [line for line in proc.stderr.decode().splitlines() if line.startswith("error: ")] == [
            f"error: snapshot {sid[:8]}: /data_as_listing: listing {data_blob.hex()[:16]} is file data, not a listing"
            + fix,
            f"error: snapshot {sid[:8]}: /tree_as_chunk: chunk {tree_blob.hex()[:16]} is a folder listing, not a chunk"
            + fix,
        ]
