"""Every command through the real CLI on SFTP (real sshd; directly, and through a ProxyJump hop
over a second sshd with the key named only in an ssh_config file) and S3 (a real moto server and
a real Ceph RGW), mount included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.richtree import rsync_diff
from support.servers import MotoServer, RGWServer, SSHDServer, proxyjump_config

PASSWORD = "remote tests"
CAN_MOUNT = os.path.exists("/dev/fuse") and os.geteuid() == 0


class RemoteCli:
    def __init__(self, url: str, options: dict[str, Any], base: Path, env: dict[str, str]) -> None:
        self.url = url
        self.opts = [a for k, v in options.items() for a in ("-o", f"{k}={v}")]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPFS_")}
        self.env.update(
            env,
            BACKUPFS_PASSWORD=PASSWORD,
            BACKUPFS_FROM_PASSWORD=PASSWORD,
            XDG_CACHE_HOME=str(base / "cache"),
            HOME=str(base / "home"),
        )

    def argv(self, *args: str | os.PathLike[str]) -> list[str]:
        return [sys.executable, "-m", "backupfs", "-r", self.url, *self.opts, *map(str, args)]

    def __call__(self, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(self.argv(*args), capture_output=True, env=self.env, timeout=300, check=False)
        assert proc.returncode == 0, f"{args}: {proc.returncode} {proc.stderr.decode(errors='replace')}"
        return proc


@pytest.fixture(params=["sftp", "sftp-proxyjump", "s3", "rgw"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> RemoteCli:
    if request.param.startswith("sftp"):
        sshd: SSHDServer = request.getfixturevalue("sshd_server")
        if request.param == "sftp":
            return RemoteCli(sshd.url(tmp_path.name), sshd.options, tmp_path, {})
        # Through a second sshd, with the key and known hosts only in the ssh_config file
        config = proxyjump_config(tmp_path / "ssh_config", request.getfixturevalue("jump_sshd"), sshd)
        return RemoteCli(f"sftp:target:{sshd.root / tmp_path.name}", {"sftp_args": f"-F {config}"}, tmp_path, {})
    s3: MotoServer | RGWServer = request.getfixturevalue(f"{request.param}_server")
    return RemoteCli(s3.url(tmp_path.name), s3.options, tmp_path, dict(s3.env))


def _tree(root: Path) -> Path:
    src = root / "src"
    (src / "docs" / "deep").mkdir(parents=True)
    (src / "docs" / "note.txt").write_text("remote note\n")
    (src / "docs" / "deep" / "data.bin").write_bytes(os.urandom(3 << 20))
    (src / "link").symlink_to("docs/note.txt")
    os.utime(src / "docs" / "note.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))
    return src


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], Path]]]:
    started: list[tuple[subprocess.Popen[bytes], Path]] = []
    yield started
    for proc, mnt in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)


def test_every_command_on_remote_repository(remote: RemoteCli, tmp_path: Path, mounted: list[Any]) -> None:
    src = _tree(tmp_path)
    remote("init")
    first = json.loads(remote("backup", src, "--json").stdout.splitlines()[-1])
    (src / "docs" / "note.txt").write_text("second version\n")
    remote("backup", src)
    snaps = json.loads(remote("snapshots", "--json").stdout)
    assert len(snaps) == 2 and snaps[0]["id"] == first["snapshot_id"]
    # metadata is cached locally after the first listing: the second one works from the cache
    cache = next(p for p in (tmp_path / "cache" / "backupfs").iterdir() if p.is_dir())  # beside CACHEDIR.TAG
    assert {p.name for p in (cache / "snapshots").iterdir()} == {s["id"] for s in snaps}
    assert (cache / "index.cache").exists()

    assert str(src / "docs" / "deep" / "data.bin") in remote("ls", "latest").stdout.decode()
    assert remote("cat", "latest", src / "docs" / "note.txt").stdout == b"second version\n"
    target = tmp_path / "restored"
    remote("restore", "latest", "--target", target, "--verify")
    assert rsync_diff(src, target / str(src).lstrip("/")) == ""
    remote("check", "--read-data")

    if CAN_MOUNT and shutil.which("fusermount3"):
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        log = tmp_path / "mount.log"
        with open(log, "wb") as errfile:
            proc = subprocess.Popen(remote.argv("mount", mnt), env=remote.env, stderr=errfile)
        mounted.append((proc, mnt))
        note = mnt / "latest" / str(src).lstrip("/") / "docs" / "note.txt"
        deadline = time.monotonic() + 30
        while not note.exists():
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "mount did not answer"
            time.sleep(0.1)
        assert note.read_text() == "second version\n"
        data = mnt / "latest" / str(src).lstrip("/") / "docs" / "deep" / "data.bin"
        assert data.read_bytes() == (src / "docs" / "deep" / "data.bin").read_bytes()
        proc.terminate()
        assert proc.wait(15) == 0

    remote("forget", "--keep-last", "1", "--prune")
    assert len(json.loads(remote("snapshots", "--json").stdout)) == 1
    # copy: a snapshot of another repository comes in, with the data the remote one lacks
    local = RemoteCli(str(tmp_path / "local"), {}, tmp_path, {})
    local("init")
    (src / "docs" / "added.txt").write_text("only in the copied snapshot\n")
    local("backup", src)
    copied = json.loads(remote("copy", "--from-repo", local.url, "--json").stdout.splitlines()[-1])
    assert copied["snapshots_copied"] == 1
    assert len(json.loads(remote("snapshots", "--json").stdout)) == 2
    remote("check", "--read-data")
    target2 = tmp_path / "restored2"
    remote("restore", "latest", "--target", target2)
    assert rsync_diff(src, target2 / str(src).lstrip("/")) == ""


def test_restore_into_a_filled_target_over_sftp(sshd_server: SSHDServer, tmp_path: Path) -> None:
    """A second restore from a remote repository fetches only what differs in the target."""
    remote = RemoteCli(sshd_server.url(tmp_path.name), sshd_server.options, tmp_path, {})
    src = _tree(tmp_path)
    remote("init")
    remote("backup", src)
    target = tmp_path / "restored"
    remote("restore", "latest", "--target", target)
    dst = target / str(src).lstrip("/")
    (dst / "docs" / "note.txt").write_text("edited after the restore\n")
    (dst / "docs" / "stray.txt").write_text("not in the snapshot\n")
    out = remote("restore", "latest", "--target", target, "--delete", "--json")
    summary = json.loads(out.stdout.splitlines()[-1])
    assert (summary["added"], summary["updated"], summary["deleted"], summary["errors"]) == (0, 1, 1, 0)
    assert summary["bytes_restored"] == len("remote note\n")  # data.bin (3 MiB) was compared, not fetched
    assert rsync_diff(src, dst) == ""
