"""SIGTERM (systemd stopping a service) and SIGHUP (a closed terminal) end a command as Ctrl-C
does: the lock removed, a source command killed, nothing half-saved, exit 128 + the signal.

Real processes, real signals; each test proves the signal landed mid-command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastrepo import init_fast
from support.cli import CLI

MiB = 1024 * 1024

# Writes 2 MiB (far more than a pipe holds, so backupfs is reading), says so, then trickles on.
# When its pipe closes it stays alive: only a kill ends it, so "gone" proves backupfs killed it.
SLOW_SOURCE = """
import os, sys, time
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # an orphan must not hold backupfs's stderr open
out = sys.stdout.buffer
try:
    for i in range(32):
        out.write(os.urandom(64 * 1024)); out.flush()
    open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    while True:
        out.write(os.urandom(4096)); out.flush(); time.sleep(0.02)
except BrokenPipeError:
    open(sys.argv[1] + ".orphan", "w").close()
    time.sleep(3600)
"""


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    init_fast(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


def start(cli: CLI, *args: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "backupfs", "-r", str(cli.repo), *args],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the signal goes to backupfs alone, as `kill PID` sends it
        **kw,  # type: ignore[arg-type]
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"finished too early: {proc.communicate()}"
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Running (not a zombie): a dead child its parent did not reap is gone for this purpose."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def one_line(stderr: bytes) -> str:
    text = stderr.decode(errors="replace")
    assert "Traceback" not in text and "internal error" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_during_stdin_from_command_backup(cli: CLI, tmp_path: Path, sig: signal.Signals, code: int) -> None:
    started = tmp_path / "source-started"
    proc = start(cli, "backup", "-q", "--stdin-from-command", "--", sys.executable, "-c", SLOW_SOURCE, str(started))
    child = 0
    try:
        wait_for(started.exists, proc)  # 2 MiB went through the pipe: backupfs is mid-stream
        child = int(started.read_text())
        assert alive(child)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert one_line(err) == f"backupfs: terminated by {sig.name}"
        assert not alive(child), "the source command outlived backupfs"
        assert not list((cli.repo / "locks").iterdir())
        assert not list((cli.repo / "snapshots").iterdir())
    finally:
        if child:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    checked = cli("check")
    assert b"error" not in checked.stderr.replace(b"no errors", b"")


def test_sigterm_during_a_file_backup(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}").write_bytes(os.urandom(20 * MiB))
    proc = start(cli, "backup", "-q", str(src))
    try:
        wait_for(lambda: any(p.is_file() for p in (cli.repo / "data").rglob("*")), proc)  # packs uploading
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert one_line(err) == "backupfs: terminated by SIGTERM"
    assert not list((cli.repo / "locks").iterdir())
    assert not list((cli.repo / "snapshots").iterdir())
    cli("check")


def test_sighup_during_cat_removes_its_lock(cli: CLI, tmp_path: Path) -> None:
    """A reading command too: `cat` blocked writing to a reader that stopped reading."""
    big = tmp_path / "src" / "big"
    big.parent.mkdir()
    big.write_bytes(os.urandom(8 * MiB))
    cli("backup", big.parent)
    proc = start(cli, "cat", "latest", str(big))
    try:
        assert proc.stdout is not None
        first = proc.stdout.read(1 << 16)  # output has begun; the rest waits in a full pipe
        assert first == big.read_bytes()[: 1 << 16]
        assert list((cli.repo / "locks").iterdir())
        proc.send_signal(signal.SIGHUP)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 129, err
    assert one_line(err) == "backupfs: terminated by SIGHUP"
    assert not list((cli.repo / "locks").iterdir())
