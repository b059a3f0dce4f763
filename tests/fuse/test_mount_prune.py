"""A long-lived mount never blocks prune, and keeps serving data that prune moved (issue 5)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from mounting import CAN_MOUNT, SKIP_REASON, Cli, Mount
from test_mount import mount  # noqa: F401 - the fixture, shared with the other mount tests

pytestmark = [pytest.mark.fuse, pytest.mark.skipif(not CAN_MOUNT, reason=SKIP_REASON)]


def test_prune_runs_under_a_mount_which_follows_moved_and_forgotten_data(
    tmp_path: Path,
    mount: Callable[..., Mount],  # noqa: F811
) -> None:
    cli = Cli(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    shared = os.urandom(1 << 20)
    (src / "shared.bin").write_bytes(shared)
    (src / "old.bin").write_bytes(os.urandom(2 << 20))
    cli("backup", src)
    (src / "old.bin").unlink()
    (src / "new.bin").write_bytes(os.urandom(2 << 20))
    cli("backup", src)
    first, second = json.loads(cli("snapshots", "--json").stdout)
    m = mount(cli)
    assert len(os.listdir(m.path / "snapshots")) == 2

    # shared.bin's chunk sits in a pack with old.bin's: forgetting the first snapshot and pruning
    # with no unused space allowed repacks it elsewhere and deletes the old pack.
    cli("forget", first["id"])
    pruned = cli("prune", "--max-unused", "0", "--json")
    assert pruned.returncode == 0  # the mount holds no lock that stops prune
    plan = json.loads(pruned.stdout.splitlines()[-1])
    assert plan["repack"], plan  # the data the mount will read next has moved
    m.wait_for(lambda: len(os.listdir(m.path / "snapshots")) == 1, what="the forgotten snapshot to go")

    here = m.path / "ids" / second["short_id"] / str(src).lstrip("/")
    assert (here / "shared.bin").read_bytes() == shared  # first read after the pack moved
    assert (here / "new.bin").read_bytes() == (src / "new.bin").read_bytes()
    assert m.proc.poll() is None
    cli("check", "--read-data")
