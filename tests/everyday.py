"""Helpers for the tests of the everyday commands (diff, find, stats, dump, tag, key export, ...).

A repository with a cheap key derivation (fastrepo.py) keeps the many CLI runs fast; `open_repo`
opens the same repository in-process when a test must look inside (count tree loads, forge an
ambiguous prefix).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from fastrepo import init_fast
from support.cli import CLI, PASSWORD

from backupfs.backends.local import LocalBackend
from backupfs.repository.repo import Repository


def fast_cli(tmp_path: Path, env: dict[str, str], name: str = "repo") -> CLI:
    repo = tmp_path / name
    init_fast(repo)
    return CLI(repo, env)


def open_repo(path: Path) -> Repository:
    repo = Repository.open(LocalBackend(str(path)), PASSWORD.encode())
    repo.load_index()
    return repo


def snapshot_ids(cli: CLI) -> list[str]:
    """Oldest first."""
    return [s["id"] for s in json.loads(cli("snapshots", "--json").stdout)]


def ambiguous_prefix(path: Path) -> str:
    """Adds copies of the latest snapshot (another host name each) until two snapshot ids share
    their first hex digit, and returns that digit: a prefix that names more than one snapshot."""
    repo = open_repo(path)
    try:
        sid, snap = repo.list_snapshots()[-1]
        seen = {sid[0]}
        for i in range(17):  # 16 digits: the 17th id repeats one at the latest
            new = repo.save_snapshot(dataclasses.replace(snap, host=f"twin-{i}"))
            if new[0] in seen:
                return new[0]
            seen.add(new[0])
        raise AssertionError("unreachable: 17 ids, 16 first digits")
    finally:
        repo.close()


def one_line_error(proc: object, code: int) -> str:
    """The command failed with `code` and said why in one line, without a traceback."""
    stderr = proc.stderr.decode()  # type: ignore[attr-defined]
    assert proc.returncode == code, (proc.returncode, stderr)  # type: ignore[attr-defined]
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    return stderr


def freeze_folder_atimes(root: Path) -> None:
    """Listing a folder updates its atime (relatime: when atime is not after mtime and ctime), and a
    tree records atimes, so the backup's own listing would give every folder a new tree id next
    time. An atime an hour ahead stays put, so an untouched folder keeps its tree id."""
    ahead = time.time_ns() + 3600 * 10**9
    for d, _dirs, _files in os.walk(root):
        os.utime(d, ns=(ahead, os.lstat(d).st_mtime_ns))
