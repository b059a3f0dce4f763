"""The mount's log stays bounded on a listing full of hostile entries (no FUSE needed: the Vfs
is driven directly, as tests/test_vfs.py does)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from hostile import Forge
from mounting import PASSWORD, Cli

from backupfs.backends.local import LocalBackend
from backupfs.mount.inodes import ROOT_INO
from backupfs.mount.vfs import Vfs
from backupfs.repository.repo import Repository


async def test_a_folder_of_many_bad_entries_logs_a_bounded_count_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cli = Cli(tmp_path)
    f = Forge(cli.repo)
    try:
        bad = [f.file(b"dot/%d" % i, b"x") for i in range(150)]  # a '/' in each name
        sid = f.snapshot([f.folder(b"x", [f.file(b"fine", b"fine\n"), *bad])])
    finally:
        f.close()
    vfs = Vfs(Repository.open(LocalBackend(str(cli.repo)), PASSWORD.encode()))
    caplog.set_level(logging.WARNING)
    async with trio.open_nursery() as nursery:
        await nursery.start(vfs.serve)
        await vfs.wait_loaded()
        ids = await vfs.lookup(ROOT_INO, b"ids")
        x = await vfs.lookup((await vfs.lookup(ids.ino, sid[:8].encode())).ino, b"x")
        for _ in range(2):
            fh = await vfs.opendir(x.ino)
            assert [e.name for e in vfs.readdir(fh, 0)] == [b"fine"]
            vfs.releasedir(fh)
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 101, lines
    assert lines[0] == f"/ids/{sid[:8]}/x: entry 'dot/0' left out: its name contains '/'"
    assert (
        lines[-1] == f"/ids/{sid[:8]}/x: 50 more entries left out, repaired or unreadable (`backupfs check` lists all)"
    )
