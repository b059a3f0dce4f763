"""The everyday commands (diff, find, stats, dump, tag, key export/import, cache) through the real
CLI on a remote repository: SFTP (a real sshd) and S3 (a real moto server)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from support.servers import MotoServer, SSHDServer

from backupfs.backends.base import FileType
from backupfs.backends.registry import open_backend

PASSWORD = "remote everyday"


class Remote:
    def __init__(self, url: str, options: dict[str, Any], base: Path, env: dict[str, str]) -> None:
        self.url, self.options = url, options
        self.opts = [a for k, v in options.items() for a in ("-o", f"{k}={v}")]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPFS_")}
        self.env.update(env, BACKUPFS_PASSWORD=PASSWORD, XDG_CACHE_HOME=str(base / "cache"), HOME=str(base / "home"))

    def __call__(
        self, *args: str | os.PathLike[str], env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [sys.executable, "-m", "backupfs", "-r", self.url, *self.opts, *map(str, args)],
            capture_output=True,
            env={**self.env, **(env or {})},
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, f"{args}: {proc.returncode} {proc.stderr.decode(errors='replace')}"
        return proc


@pytest.fixture(params=["sftp", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    if request.param == "sftp":
        sshd: SSHDServer = request.getfixturevalue("sshd_server")
        return Remote(sshd.url(tmp_path.name), sshd.options, tmp_path, {})
    s3: MotoServer = request.getfixturevalue("s3_server")
    return Remote(s3.url(tmp_path.name), s3.options, tmp_path, dict(s3.env))


def test_everyday_commands_on_a_remote_repository(remote: Remote, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "report.pdf").write_bytes(os.urandom(200_000))
    (src / "notes.txt").write_text("v1\n")
    remote("init")
    remote("backup", src)
    (src / "notes.txt").write_text("version two\n")
    (src / "docs" / "new.pdf").write_bytes(b"%PDF")
    remote("backup", src)
    first, second = (s["id"] for s in json.loads(remote("snapshots", "--json").stdout))

    changes = [json.loads(line) for line in remote("diff", first, second, "--json").stdout.splitlines()]
    assert {(c["path"], c["modifier"]) for c in changes[:-1]} >= {
        (f"{src}/notes.txt", "M"),
        (f"{src}/docs/new.pdf", "+"),
    }
    found = json.loads(remote("find", "*.pdf", "--json").stdout)
    assert [len(f["matches"]) for f in found] == [2, 1]  # newest snapshot first
    stats = json.loads(remote("stats", "--json").stdout)
    assert stats["snapshots_count"] == 2 and stats["data_size"] >= 200_000

    tar_bytes = remote("dump", "latest", src / "docs").stdout
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.extractfile(f"{str(src).lstrip('/')}/docs/report.pdf")
        assert member is not None and member.read() == (src / "docs" / "report.pdf").read_bytes()
    assert remote("dump", "latest", src / "notes.txt").stdout == b"version two\n"

    doc = json.loads(remote("tag", "latest", "--add", "remote", "--json").stdout)
    assert doc["changed_snapshots"] == 1 and doc["changes"][0]["old_removed"]
    assert [s["tags"] for s in json.loads(remote("snapshots", "--json").stdout)] == [[], ["remote"]]

    export = tmp_path / "key.paper"
    remote("key", "export", "--paper", export)
    backend = open_backend(remote.url, **remote.options)
    try:
        for name, _size in list(backend.list(FileType.KEY)):
            backend.remove(FileType.KEY, name)
    finally:
        backend.close()
    remote("key", "import", export, env={"BACKUPFS_NEW_PASSWORD": "after the loss"})
    snaps = json.loads(remote("snapshots", "--json", env={"BACKUPFS_PASSWORD": "after the loss"}).stdout)
    assert len(snaps) == 2

    caches = json.loads(remote("cache", "--json").stdout)["caches"]
    assert len(caches) == 1 and caches[0]["size"] > 0  # a remote repository's snapshots and trees
