"""Real servers for backend tests and benchmarks: an OpenSSH sshd, a moto S3 server, a Ceph RGW
(a real distributed object store, tools/ceph_rgw.py) and a cuttable TCP proxy.

Plain classes, no pytest, so fixtures anywhere and benchmark scripts alike can reuse them.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ceph_rgw import CephRGW  # tools/ is on the path of pytest and of every tool
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"

# Short timeouts and retry delays: a failing test must fail in seconds, not minutes.
FAST = {"retry_attempts": 2, "retry_base_delay": 0.01, "retry_max_delay": 0.05}
FAST_SFTP = {**FAST, "sftp_timeout": 10}
FAST_S3 = {**FAST, "s3_timeout": 10}


def shutdown_all(socks: list[socket.socket]) -> None:
    """Ends both directions of each connection (a cut or killed server, as the client sees it)."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.02)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (sshd forks session processes into their own sessions)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def ssh_clients(parent: int | None = None, port: int | None = None) -> list[int]:
    """Running `ssh` processes below `parent` (this process), to `port` if given (by its -p)."""
    found = []
    for pid in descendants(os.getpid() if parent is None else parent):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if state != "Z" and argv[0].endswith(b"ssh") and (port is None or str(port).encode() in argv):
            found.append(pid)
    return found


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def write_ed25519_key(path: Path, comment: str, passphrase: bytes | None = None) -> str:
    """Write an OpenSSH-format private key; return the public key line."""
    key = Ed25519PrivateKey.generate()
    protection = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, protection))
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.decode()} {comment}"


def ensure_sshd() -> str | None:
    """Return None when sshd is usable, else the reason it is not (install it via apt if possible)."""
    if not os.path.exists(SSHD) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server"],
        ):
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing and openssh-server could not be installed (run tools/install-deps.sh --test)"
    if os.geteuid() == 0:
        # Privilege separation chroots into this directory; the Debian service normally creates it.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    return None


class SSHDServer:
    """A private OpenSSH sshd on 127.0.0.1 with generated host and user keys.

    Repositories go under `root`; `url(name)` gives an sftp URL for a fresh one there and
    `options` the `open_backend` keyword options that authenticate and pin the host key.
    `sftp=False` leaves out the sftp subsystem; `extra` adds sshd_config lines. `sftp_log` has
    the SFTP server log each file it opens and, at its close, the bytes read and written there
    (`sftp_transfers` sums them): what the server saw, for tests of a client's own counts.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        max_sessions: int = 64,
        sftp: bool = True,
        extra: tuple[str, ...] = (),
        sftp_log: bool = False,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.root = workdir / "repos"
        self.root.mkdir(parents=True, exist_ok=True)
        self.client_key = workdir / "id_ed25519"
        self.known_hosts = workdir / "known_hosts"
        self.log_path = workdir / "sshd.log"
        self.sftp_log_path = workdir / "sftp-server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        host_key = workdir / "ssh_host_ed25519_key"
        host_pub = write_ed25519_key(host_key, "backupfs-test-host")
        (workdir / "authorized_keys").write_text(write_ed25519_key(self.client_key, "backupfs-test-user") + "\n")
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub}\n")
        self.config = workdir / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    self._subsystem(sftp, sftp_log),
                    f"MaxSessions {max_sessions}",
                    "MaxStartups 64",
                    "LogLevel ERROR",
                    *extra,
                    "",
                ]
            )
        )

    @property
    def options(self) -> dict[str, Any]:
        return {
            "sftp_key": str(self.client_key),
            "sftp_known_hosts": str(self.known_hosts),
            "sftp_strict_host_keys": True,
        }

    def url(self, name: str, port: int | None = None) -> str:
        """sftp URL (absolute path form) of repository `name` under `root`; `port` for a proxy."""
        return f"sftp://{self.user}@127.0.0.1:{port or self.port}/{self.root / name}"

    def trust_port(self, port: int) -> None:
        """Accept this server's host key on another port too (a TcpProxy in front of it)."""
        key = self.known_hosts.read_text().splitlines()[0].split(" ", 1)[1]
        with open(self.known_hosts, "a") as f:
            f.write(f"[127.0.0.1]:{port} {key}\n")

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        _wait_for(self._answers, f"sshd on port {self.port} (see {self.log_path})")

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {self._proc.returncode}: {self.log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(8).startswith(b"SSH-")
        except OSError:
            return False

    def _subsystem(self, sftp: bool, log: bool) -> str:
        if not sftp:
            return ""
        if not log:
            return "Subsystem sftp internal-sftp"
        # internal-sftp's log does not reach sshd -e's stderr: the server program, its log
        # (-e: to stderr) appended to a file by the login shell that runs the subsystem
        return f"Subsystem sftp {SFTP_SERVER} -e -l INFO 2>>{self.sftp_log_path}"

    def sftp_transfers(self, since: int = 0) -> dict[str, int]:
        """From the SFTP server's log, past byte `since`: files opened and bytes read and written
        in them (each counted when closed)."""
        if not self.sftp_log_path.exists():
            return {"opens": 0, "closes": 0, "bytes_read": 0, "bytes_written": 0}
        text = self.sftp_log_path.read_bytes()[since:].decode(errors="replace")
        closes = re.findall(r'close "[^"]*" bytes read (\d+) written (\d+)', text)
        return {
            "opens": len(re.findall(r'open "[^"]*" flags', text)),
            "closes": len(closes),
            "bytes_read": sum(int(r) for r, _w in closes),
            "bytes_written": sum(int(w) for _r, w in closes),
        }

    def sftp_log_size(self) -> int:
        return self.sftp_log_path.stat().st_size if self.sftp_log_path.exists() else 0

    def kill_sessions(self) -> None:
        """Kill every connection's server process, as if the network dropped; keep listening."""
        if self._proc is not None:
            for pid in descendants(self._proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self._proc is None:
            return
        sessions = descendants(self._proc.pid)
        self._proc.kill()
        self._proc.wait()
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SSHDServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proxyjump_config(path: Path, jump: SSHDServer, target: SSHDServer, alias: str = "target") -> Path:
    """An ssh_config file (for `ssh -F`) that reaches `target` as `alias` through `jump`
    (ProxyJump), each server's user key and known-hosts file named in it: the repository URL
    and this file are all the ssh command needs."""
    stanzas = [
        ("jump", jump, ""),
        (alias, target, "  ProxyJump jump\n"),
    ]
    path.write_text(
        "".join(
            f"Host {name}\n  HostName 127.0.0.1\n  Port {server.port}\n  User {server.user}\n"
            f"  IdentityFile {server.client_key}\n  UserKnownHostsFile {server.known_hosts}\n{extra}"
            for name, server, extra in stanzas
        )
    )
    return path


class MotoServer:
    """A moto S3 server process; state lives in its memory and is lost on stop()."""

    env = {
        "AWS_ACCESS_KEY_ID": "backupfs-test",
        "AWS_SECRET_ACCESS_KEY": "backupfs-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    # Settings that would make boto3 ignore the variables above or read the developer's files.
    unset_env = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = workdir / f"moto-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def options(self) -> dict[str, Any]:
        return {}

    def url(self, name: str, bucket: str = "backupfs-test") -> str:
        return f"s3:{self.endpoint}/{bucket}/{name}"

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, **self.env)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env,
        )
        _wait_for(self._answers, f"moto_server on port {self.port} (see {self.log_path})", timeout=60)

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"moto_server exited: {self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2) as resp:
                return int(resp.status) < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RGWServer:
    """A single-node Ceph cluster with RGW (tools/ceph_rgw.py), shaped like MotoServer: same
    credentials (so the two share the environment), `url(name)`, `options`, `env`.

    Unlike moto, its objects live in the OSD, not in the gateway: `kill()` and `restart()` end
    radosgw with SIGKILL and start it again on the same port, the repository intact."""

    env = MotoServer.env
    unset_env = MotoServer.unset_env

    def __init__(self, workdir: Path) -> None:
        self.cluster = CephRGW(
            workdir, access_key=self.env["AWS_ACCESS_KEY_ID"], secret_key=self.env["AWS_SECRET_ACCESS_KEY"]
        )

    @property
    def port(self) -> int:
        return self.cluster.port

    @property
    def endpoint(self) -> str:
        return self.cluster.endpoint

    @property
    def options(self) -> dict[str, Any]:
        return {}

    def url(self, name: str, bucket: str = "backupfs-test") -> str:
        return f"s3:{self.endpoint}/{bucket}/{name}"

    def kill(self) -> None:
        self.cluster.kill_gateway()

    def restart(self) -> None:
        self.cluster.start_gateway()

    def __enter__(self) -> RGWServer:
        self.cluster.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.stop()


class TcpProxy:
    """Forwards 127.0.0.1:port to an upstream port and can cut every connection on demand.

    `cut_after(n)` drops all connections once `n` more bytes went client -> server: a network
    failure in the middle of an upload, at a deterministic point.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._live: list[socket.socket] = []
        self._all: list[socket.socket] = []
        self._budget: int | None = None
        self._threads: list[threading.Thread] = []
        self._start(self._accept_loop)

    def _start(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def cut_after(self, nbytes: int) -> None:
        with self._lock:
            self._budget = nbytes

    def cut(self) -> None:
        """Drop every open connection now (new ones are still accepted)."""
        with self._lock:
            socks, self._live = self._live, []
        shutdown_all(socks)

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._live += [client, upstream]
                self._all += [client, upstream]
            self._start(self._pump, client, upstream, True)
            self._start(self._pump, upstream, client, False)

    def _pump(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            if upload:
                with self._lock:
                    cut = self._budget is not None and self._budget <= len(data)
                    if self._budget is not None:
                        self._budget -= len(data)
                if cut:
                    with self._lock:
                        self._budget = None
                    self.cut()
                    return
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        self.cut()
        for t in self._threads:
            t.join(timeout=5)
        self._listener.close()
        for s in self._all:
            s.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def env_vars(values: dict[str, str], unset: tuple[str, ...] = ()) -> Iterator[None]:
    """Temporarily set and unset environment variables (for session-scoped fixtures)."""
    saved = {k: os.environ.get(k) for k in (*values, *unset)}
    os.environ.update(values)
    for k in unset:
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
