"""SFTP through the system's OpenSSH client, on real sshd servers: what ssh's own configuration
reaches (a ProxyJump hop, an IdentityFile), how its failures read, and that its processes never
outlive their use, prompt on a terminal, or survive the backupfs that started them."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from support.servers import (
    FAST_SFTP,
    SSHDServer,
    ensure_sshd,
    proxyjump_config,
    running,
    ssh_clients,
    write_ed25519_key,
)

from backupfs.backends.base import Backend, FileType
from backupfs.backends.counting import innermost
from backupfs.backends.registry import open_backend
from backupfs.backends.sftp.backend import SFTPBackend
from backupfs.backends.sftp.openssh import cpu_has_aes, fast_ciphers
from backupfs.errors import BackendError, TransientBackendError

from .test_cli_remote import RemoteCli

MiB = 1 << 20
GONE_WITHIN = 20  # seconds for an ssh process to end once nothing needs it


@pytest.fixture(autouse=True)
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the keys each test names: no ssh-agent of the developer's."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.02)


def sftp_of(backend: Backend) -> SFTPBackend:
    return cast(SFTPBackend, innermost(backend))


def started(tmp_path: Path, name: str, **kwargs: Any) -> SSHDServer:
    reason = ensure_sshd()
    if reason:
        pytest.skip(reason)
    (tmp_path / name).mkdir()
    server = SSHDServer(tmp_path / name, **kwargs)
    server.start()
    return server


# --- what the ssh configuration reaches ---


def test_a_proxyjump_hop_named_only_in_the_ssh_config(tmp_path: Path) -> None:
    jump, target = started(tmp_path, "jump"), started(tmp_path, "target")
    try:
        config = proxyjump_config(tmp_path / "ssh_config", jump, target)
        url = f"sftp:target:{target.root / 'repo'}"
        backend = open_backend(url, sftp_args=f"-F {config}", **FAST_SFTP)
        backend.create()
        data = os.urandom(3 * MiB)
        backend.save(FileType.DATA, "ab" * 32, data)
        assert backend.load(FileType.DATA, "ab" * 32, 5, MiB) == data[5 : 5 + MiB]
        assert (target.root / "repo" / "data" / "ab" / ("ab" * 32)).read_bytes() == data
        backend.close()
        jump.stop()  # the hop is real: without the jump host there is no way through
        again = open_backend(url, sftp_args=f"-F {config}", **FAST_SFTP)
        with pytest.raises(TransientBackendError, match=r"^cannot connect to target: connection refused$"):
            again.exists()
        again.close()
    finally:
        jump.stop()
        target.stop()


def test_the_identity_file_comes_from_the_ssh_config(sshd_server: SSHDServer, tmp_path: Path) -> None:
    def config(identity: bool) -> str:
        path = tmp_path / f"config-{identity}"
        path.write_text(
            f"Host backups\n  HostName 127.0.0.1\n  Port {sshd_server.port}\n  User {sshd_server.user}\n"
            f"  UserKnownHostsFile {sshd_server.known_hosts}\n"
            + (f"  IdentityFile {sshd_server.client_key}\n" if identity else "")
        )
        return f"-F {path}"

    url = f"sftp:backups:{sshd_server.root / tmp_path.name}"
    without = open_backend(url, sftp_args=config(identity=False), **FAST_SFTP)
    with pytest.raises(BackendError, match=r"^cannot connect to backups: authentication failed \(publickey\)") as info:
        without.exists()
    assert not isinstance(info.value, TransientBackendError)
    with_key = open_backend(url, sftp_args=config(identity=True), **FAST_SFTP)
    with_key.create()
    assert with_key.exists() is False  # the layout, no config yet: connected
    with_key.close()


def test_aes_gcm_goes_first_unless_the_configuration_chose(tmp_path: Path) -> None:
    preferred = fast_ciphers(["ssh", "-F", "/dev/null"], "host")
    if cpu_has_aes():
        assert preferred and preferred[0].startswith("-oCiphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,")
    else:
        assert preferred == []
    chosen = tmp_path / "config"
    chosen.write_text("Host *\n  Ciphers chacha20-poly1305@openssh.com\n")
    assert fast_ciphers(["ssh", "-F", str(chosen)], "host") == []
    # a chosen order is kept even when it includes AES-GCM
    chosen.write_text("Host *\n  Ciphers chacha20-poly1305@openssh.com,aes128-gcm@openssh.com,aes256-gcm@openssh.com\n")
    assert fast_ciphers(["ssh", "-F", str(chosen)], "host") == []
    assert fast_ciphers(["ssh", "-F", "/dev/null", "-c", "aes256-ctr"], "host") == []


def test_a_server_without_aes_gcm_is_still_reached(tmp_path: Path) -> None:
    """The preference is an order, never a requirement."""
    server = started(tmp_path, "chacha", extra=("Ciphers chacha20-poly1305@openssh.com",))
    try:
        backend = open_backend(server.url("repo"), **server.options, **FAST_SFTP)
        backend.create()
        backend.close()
    finally:
        server.stop()


# --- failures, each in one line ---


def _failure(url: str, **options: Any) -> BackendError:
    backend = open_backend(url, **{**FAST_SFTP, "retry_attempts": 1, **options})
    started_at = time.monotonic()
    try:
        with pytest.raises(BackendError) as info:
            backend.exists()
    finally:
        backend.close()
    assert time.monotonic() - started_at < 15
    assert "\n" not in str(info.value)
    return info.value


def test_no_sftp_subsystem(tmp_path: Path) -> None:
    server = started(tmp_path, "nosftp", sftp=False)
    try:
        error = _failure(server.url("repo"), **server.options)
    finally:
        server.stop()
    assert str(error) == f"cannot connect to {server.user}@127.0.0.1:{server.port}: the server offers no sftp subsystem"
    assert not isinstance(error, TransientBackendError)


def test_unknown_host_name() -> None:
    error = _failure("sftp://me@no-such-host.invalid//repo")
    assert str(error).startswith("cannot connect to me@no-such-host.invalid: ")
    # "unknown host (Name or service not known)"; where no DNS server answers, a transient error
    assert "unknown host" in str(error) or isinstance(error, TransientBackendError)


@pytest.mark.parametrize(
    ("options", "message", "transient"),
    [
        (
            {"sftp_command": "/nonexistent/ssh -s sftp"},
            r"^cannot run /nonexistent/ssh: No such file or directory$",
            False,
        ),
        (
            {"sftp_command": "sh -c \"echo 'Welcome!'; cat >/dev/null\""},
            r"^cannot connect to h: the server's reply is not SFTP \(",
            False,
        ),
        ({"sftp_command": "true"}, r"^cannot connect to h: ssh exited with status 0 and said nothing$", True),
        (
            {"sftp_args": "-o NoSuchOption=yes"},
            r"^cannot connect to h: .*Bad configuration option: nosuchoption$",
            False,
        ),
    ],
    ids=["not-runnable", "not-sftp", "silent-exit", "bad-option"],
)
def test_commands_that_cannot_carry_sftp(options: dict[str, str], message: str, transient: bool) -> None:
    error = _failure("sftp:h:/repo", **options)
    assert re.search(message, str(error)), str(error)
    assert isinstance(error, TransientBackendError) is transient


def test_a_failed_connection_leaves_no_process(sshd_server: SSHDServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    _failure(sshd_server.url("repo"), **{**sshd_server.options, "sftp_known_hosts": str(empty)})
    assert ssh_clients(port=sshd_server.port) == []


def test_the_openssh_transport_never_loads_paramiko(sshd_server: SSHDServer, tmp_path: Path) -> None:
    """paramiko (with cryptography) costs ~0.4 s of start-up: only its own transport may load it."""
    script = (
        "import sys\n"
        "from backupfs.backends.registry import open_backend\n"
        "from backupfs.backends.base import FileType\n"
        f"b = open_backend({sshd_server.url(tmp_path.name)!r}, **{sshd_server.options!r})\n"
        "b.create()\n"
        "b.save(FileType.KEY, 'ab' * 32, b'x')\n"
        "assert b.load(FileType.KEY, 'ab' * 32) == b'x'\n"
        "b.close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko', 'cryptography')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert (out.returncode, out.stdout.strip()) == (0, "[]"), out.stderr


# --- processes: as many as configured, replaced when they die, never left behind ---


def test_sessions_are_ssh_processes_up_to_sftp_connections(sshd_server: SSHDServer, tmp_path: Path) -> None:
    backend = open_backend(sshd_server.url(tmp_path.name), **sshd_server.options, **FAST_SFTP, sftp_connections=2)
    backend.create()
    sftp = sftp_of(backend)
    with sftp._session("a") as a, sftp._session("b") as b, sftp._session("c") as c:
        assert a is not b and c in (a, b)  # a third user shares one of the two
        assert len(ssh_clients(port=sshd_server.port)) == 2
    procs = ssh_clients(port=sshd_server.port)
    backend.close()
    assert ssh_clients(port=sshd_server.port) == []
    assert not any(running(pid) for pid in procs)


def test_a_dead_ssh_process_is_replaced(sshd_server: SSHDServer, tmp_path: Path) -> None:
    options = {**sshd_server.options, **FAST_SFTP, "sftp_connections": 1, "retry_attempts": 1}
    backend = open_backend(sshd_server.url(tmp_path.name), **options)
    backend.create()
    backend.save(FileType.KEY, "cd" * 32, b"key")
    [first] = ssh_clients(port=sshd_server.port)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not running(first), 10, "the killed ssh is gone")
    assert backend.load(FileType.KEY, "cd" * 32) == b"key"  # noticed before use: no error, no retry
    [second] = ssh_clients(port=sshd_server.port)
    assert second != first
    backend.close()


def _tree(root: Path) -> Path:
    src = root / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}.bin").write_bytes(os.urandom(2 * MiB))
    return src


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_ssh_process_outlives_backupfs(private_sshd: SSHDServer, tmp_path: Path, sig: int) -> None:
    """SIGTERM: backupfs closes its connections. SIGKILL: each ssh sees the end of its stdin."""
    cli = RemoteCli(private_sshd.url("repo"), {**private_sshd.options, "sftp_connections": 2}, tmp_path, {})
    cli("init", "--pack-size", "1")
    backup = subprocess.Popen(
        cli.argv("backup", _tree(tmp_path)), env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until(lambda: bool(ssh_clients(parent=backup.pid)), 60, "backupfs starts ssh")
        procs = ssh_clients(parent=backup.pid)
        backup.send_signal(sig)
        _out, err = backup.communicate(timeout=60)
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    if sig == signal.SIGTERM:
        assert backup.returncode == 128 + signal.SIGTERM, err
        assert err.decode().strip().splitlines()[-1] == "backupfs: terminated by SIGTERM"
        assert not any(running(pid) for pid in procs)  # stopped before backupfs exited
    wait_until(lambda: not any(running(pid) for pid in procs), GONE_WITHIN, "every ssh process has ended")


def test_ssh_never_prompts_on_the_terminal(private_sshd: SSHDServer, tmp_path: Path) -> None:
    """A key with a passphrase and no agent: an error, not a prompt on the controlling terminal
    that no one will answer (cron, systemd, a script) or that one of several processes grabs."""
    locked = tmp_path / "id_locked"
    public = write_ed25519_key(locked, "locked", passphrase=b"secret")
    with open(private_sshd.workdir / "authorized_keys", "a") as f:
        f.write(public + "\n")
    cli = RemoteCli(private_sshd.url("repo"), {**private_sshd.options, "sftp_key": str(locked)}, tmp_path, {})
    pid, terminal = pty.fork()
    if pid == 0:  # the child: backupfs with the pty as its controlling terminal
        try:
            os.execve(cli.argv("init")[0], cli.argv("init"), cli.env)
        finally:
            os._exit(127)
    output = b""
    status: int | None = None
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([terminal], [], [], 0.1)
            try:
                chunk = os.read(terminal, 4096) if ready else b"-"
            except OSError:  # EIO: the child has exited and the terminal is gone
                chunk = b""
            if not chunk:
                break
            output += chunk if ready else b""
        else:
            pytest.fail(f"still running after 60 s (waiting for an answer?): {output!r}")
        _, status = os.waitpid(pid, 0)
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)
    assert status is not None
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 1, text
    assert "enter passphrase" not in text.lower(), text
    assert "authentication failed (publickey)" in text, text
