"""`verify --through-mount`: the drill reads its sample through a real `backupfs mount`, the path a
person restoring with `cp` takes (format.md 14)."""

from __future__ import annotations

import json
from pathlib import Path

import blake3
import pytest
from mounting import CAN_MOUNT, SKIP_REASON, Cli

from backupfs.backends.local import LocalBackend
from backupfs.ops.treeview import lookup
from backupfs.repository.repo import Repository

pytestmark = [pytest.mark.fuse, pytest.mark.skipif(not CAN_MOUNT, reason=SKIP_REASON)]

MiB = 1 << 20
FUSE_SUPER_MAGIC = "65735546"  # what `stat -f -c %t` prints for a file on a FUSE file system


def rand(n: int, seed: int) -> bytes:
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)


def mounted_below(path: Path) -> list[str]:
    with open("/proc/mounts", encoding="utf-8", errors="surrogateescape") as f:
        return [line for line in f if str(path) in line]


def test_a_drill_through_a_real_mount_passes_and_catches_a_damaged_chunk(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "note.txt").write_bytes(b"through the mount\n" * 100)
    (src / "big.bin").write_bytes(rand(3 * MiB, 1))
    cli("backup", src)
    on_fuse = f'test "$(stat -f -c %t {{}})" = {FUSE_SUPER_MAGIC}'  # read from a FUSE mount, not a copy

    proc = cli("verify", "--through-mount", "--json", "--exec", on_fuse, "--scratch", tmp_path / "scratch")
    out = json.loads(proc.stdout.splitlines()[-1])  # the summary, after any progress lines
    assert out["ok"] and out["method"] == "mount" and out["files_verified"] == 2 and out["commands_run"] == 2
    assert not mounted_below(tmp_path) and not list((tmp_path / "scratch").iterdir())  # unmounted, removed
    status = json.loads(cli("verify", "--status", "--json").stdout)
    assert status["message_type"] == "verify_status" and status["last"]["method"] == "mount" and status["ok"]

    repo = Repository.open(LocalBackend(str(cli.repo)), b"mount tests")
    try:
        repo.load_index()
        node = lookup(repo, repo.find_snapshot("latest")[1].tree, f"{src}/big.bin")
        assert node.content is not None
        loc = repo.index.lookup(node.content[1][1])
        assert loc is not None
        pack = cli.repo / "data" / loc.pack_id.hex()[:2] / loc.pack_id.hex()
    finally:
        repo.close()
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x40
    pack.chmod(0o600)
    pack.write_bytes(bytes(data))

    proc = cli("verify", "--through-mount", "--json", check=False)
    assert proc.returncode == 4, proc.stderr
    *_, summary, error = map(json.loads, proc.stdout.splitlines())  # --json: the failure last
    assert summary["message_type"] == "summary" and error["code"] == 4
    [failure] = summary["failures"]
    assert failure["path"] == f"{src}/big.bin" and "Input/output error" in failure["what"]
    assert not mounted_below(tmp_path)
