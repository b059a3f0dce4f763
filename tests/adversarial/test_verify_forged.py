"""A chunk list whose order was changed by someone holding the key: every blob still decrypts and
hashes to its id, so `check --read-data` passes; `verify` restores the file and sees that the
content is not the file that was backed up (format.md 9, `fh`)."""

from __future__ import annotations

from pathlib import Path

import blake3
from hostile import Forge, assert_clean
from mounting import Cli

from backupfs.ops.treeview import lookup

MiB = 1 << 20
EXIT_INTEGRITY = 4


def rand(n: int, seed: int) -> bytes:
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)


def test_a_forged_chunk_order_is_caught_by_verify_and_not_by_check(tmp_path: Path) -> None:
    """All blobs valid, every offset in range: only the whole-file hash sees that the chunks are
    in the wrong order. The tree is forged with the repository's key (tests/adversarial)."""
    cli = Cli(tmp_path)
    data = rand(6 * MiB, 3)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.bin").write_bytes(data)
    cli("backup", tmp_path / "src")
    forge = Forge(cli.repo)
    try:
        _sid, snap = forge.repo.find_snapshot("latest")
        node = lookup(forge.repo, snap.tree, f"{tmp_path}/src/f.bin")
        assert node.file_hash is not None and node.content is not None and len(node.content) >= 2
        (o0, a), (o1, b) = node.content[:2]
        assert o0 == 0
        length_b = forge.repo.index.raw_length(b)
        assert length_b is not None and o1 + length_b == (node.content[2][0] if len(node.content) > 2 else node.size)
        swapped = [[0, b], [length_b, a], *map(list, node.content[2:])]
        entry = {"n": b"f.bin", "t": "f", "m": 0o644, "u": 0, "g": 0, "mt": node.mtime_ns, "at": node.atime_ns}
        entry.update(ct=node.ctime_ns, s=node.size, c=swapped, fh=node.file_hash)
        forged = forge.snapshot([entry])
    finally:
        forge.close()
    assert cli("check", "--read-data").returncode == 0  # every blob decrypts and hashes to its id
    restored = tmp_path / "restored"
    cli("restore", forged, "--target", restored)  # and the restore writes what the tree says
    assert (restored / "f.bin").read_bytes() != data
    proc = cli("verify", forged, "--max-bytes", "100M", check=False)
    err = proc.stderr.decode()
    assert_clean(err)
    assert proc.returncode == EXIT_INTEGRITY, err
    assert f"snapshot {forged[:8]}: /f.bin: its content differs from the file backed up (whole-file hash)" in err
