#!/usr/bin/env python3
"""SFTP transports and clients compared on loopback against a real sshd (issue 15).

  clients  one file of --size MiB written and read back by each combination of SSH transport
           (the system's ssh process, or paramiko in Python) and SFTP client (ours,
           backupfs/backends/sftp/protocol.py, or paramiko's SFTPClient with its own pipelining:
           prefetch() for reads, set_pipelined() for writes): MB/s, the CPU time of this Python
           process and of the ssh process, per 100 MB.
  pool     SFTPBackend loads of --size MiB in 8 MiB files from --threads threads, over 1, 2 and
           4 sessions (ssh processes; paramiko: channels of one connection): MB/s and CPU.
  restic   the CLIs side by side on the same sshd: `init`, `backup` and `restore` of the mixed
           tree of tools/corpus.py (about 2 GiB x --scale) by backupfs over each transport and
           by restic (`-o sftp.command=ssh ...`, ssh's own cipher order, and with AES-GCM as
           backupfs asks for): wall time, CPU of the tool and its ssh processes, repository
           size; the median of --repeat runs, each into a new repository.

Both run with each transport's first cipher (OpenSSH: chacha20-poly1305; paramiko: aes128-ctr)
and with AES-GCM (what backupfs asks ssh for first on CPUs with AES instructions when no
configuration chose the ciphers; paramiko through backupfs always prefers it). sshd and its sftp-server
run on the same machine and take CPU too: these are lower bounds, and noisy on a busy machine
(the load average is printed with every row).

    python3 tools/bench_sftp.py [--size MIB] [--repeat N] [--threads K] [--scale F]
                                [--only clients,pool,restic]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paramiko
from benchlib.corpus import ByteSource, gen_mixed
from support.servers import SSHDServer, ensure_sshd

from backupfs.backends.base import FileType
from backupfs.backends.sftp.backend import SFTPBackend
from backupfs.backends.sftp.openssh import SSHProcess, ssh_command
from backupfs.backends.sftp.protocol import MAX_CHUNK, Session

MiB = 1 << 20
PASSWORD = "bench"
SEED = 15  # the corpus: the same bytes on every run
# the cipher each transport starts with (OpenSSH: chacha20-poly1305; paramiko: aes128-ctr), and
# AES-GCM (what backupfs asks ssh for first on CPUs with AES instructions, and paramiko for always)
CIPHERS = {"default": "chacha20-poly1305@openssh.com", "aes-gcm": "aes128-gcm@openssh.com"}
PARAMIKO_CIPHERS = {"default": "aes128-ctr", "aes-gcm": "aes128-gcm@openssh.com"}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Clock:
    """Wall time, our CPU time and the ssh process's, per phase (write, then read)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.py: list[float] = []
        self.ssh: list[float] = []

    def start(self, pid: int | None) -> None:
        self.pid = pid
        self.mark = (time.perf_counter(), cpu(), proc_cpu(pid))

    def lap(self) -> None:
        now = (time.perf_counter(), cpu(), proc_cpu(self.pid))
        for total, before, after in zip((self.wall, self.py, self.ssh), self.mark, now, strict=True):
            total.append(after - before)
        self.mark = now


Runner = Callable[[str, bytes, Clock], None]


class Pipes:
    """An ssh process's pipes as the socket paramiko's SFTPClient expects."""

    def __init__(self, proc: SSHProcess) -> None:
        self.proc = proc
        self.buf = bytearray(MiB)

    def send(self, data: bytes) -> int:
        self.proc.write([data])
        return len(data)

    def recv(self, n: int) -> bytes:
        view = memoryview(self.buf)[: min(n, len(self.buf))]
        return bytes(view[: self.proc.read_into(view)])

    def recv_ready(self) -> bool:
        out = self.proc.proc.stdout
        assert out is not None  # started with stdout=PIPE
        return bool(select.select([out], [], [], 0)[0])

    def get_name(self) -> str:
        return "ssh"

    def close(self) -> None:
        self.proc.close()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = args.size * MiB
        self.work = Path(tempfile.mkdtemp(prefix="bench-sftp-"))
        self.server = SSHDServer(self.work)
        self.transports: list[Any] = []

    def argv(self, ciphers: str) -> list[str]:
        s = self.server
        return ssh_command(
            "127.0.0.1",
            user=s.user,
            port=s.port,
            key_filename=str(s.client_key),
            known_hosts=str(s.known_hosts),
            args=["-F", "/dev/null", "-c", CIPHERS[ciphers]],
        )

    def paramiko_transport(self, ciphers: str) -> Any:
        s = self.server
        sock = socket.create_connection(("127.0.0.1", s.port))
        transport = paramiko.Transport(sock)
        transport.get_security_options().ciphers = (PARAMIKO_CIPHERS[ciphers],)
        transport.start_client()
        keys = paramiko.HostKeys(str(s.known_hosts))
        assert keys.check(f"[127.0.0.1]:{s.port}", transport.get_remote_server_key())
        transport.auth_publickey(s.user, paramiko.Ed25519Key.from_private_key_file(str(s.client_key)))
        return transport

    # --- one file, each client ---

    @staticmethod
    def ours(stream_of: Callable[[], tuple[Any, int | None]]) -> Runner:
        def run(path: str, data: bytes, clock: Clock) -> None:
            stream, pid = stream_of()
            session = Session(stream, 30)
            session.handshake()
            session.read_chunk, session.write_chunk = session.limits()
            clock.start(pid)
            handle = session.create(path)
            session.write_all(handle, memoryview(data))
            session.close_handle(handle)
            clock.lap()
            handle = session.open_read(path)
            assert session.read_range(handle, 0, len(data)) == data
            session.close_handle(handle)
            clock.lap()
            session.close()

        return run

    @staticmethod
    def paramikos(client_of: Callable[[], tuple[Any, int | None]]) -> Runner:
        def run(path: str, data: bytes, clock: Clock) -> None:
            client, pid = client_of()
            clock.start(pid)
            with client.open(path, "wb") as f:
                f.set_pipelined(True)
                for i in range(0, len(data), MAX_CHUNK):
                    f.write(data[i : i + MAX_CHUNK])
            clock.lap()
            with client.open(path, "rb") as f:
                f.prefetch(len(data))
                pieces = []
                while piece := f.read(MiB):  # one read(len(data)) takes quadratic time in paramiko 5
                    pieces.append(piece)
                assert b"".join(pieces) == data
            clock.lap()
            client.close()

        return run

    def clients(self) -> None:
        data = os.urandom(self.size)
        mb = len(data) / 1e6
        print(f"\n## {self.args.size} MiB written, then read back: MB/s, and CPU seconds per 100 MB\n")
        print("| transport + client | ciphers | write MB/s | read MB/s | Python CPU w / r | ssh CPU w / r | load |")
        print("|---|---|---|---|---|---|---|")
        for ciphers in CIPHERS:
            variants = {
                "ssh + ours": self.ours(partial(self.ssh_stream, ciphers)),
                "ssh + paramiko SFTPClient": self.paramikos(partial(self.ssh_paramiko_client, ciphers)),
                "paramiko + ours": self.ours(partial(self.channel_stream, ciphers)),
                "paramiko + paramiko SFTPClient": self.paramikos(partial(self.paramiko_client, ciphers)),
            }
            for name, run in variants.items():
                clocks = []
                for i in range(self.args.repeat):
                    path = str(self.server.root / f"f-{i}")
                    clock = Clock()
                    run(path, data, clock)
                    clocks.append(clock)
                    os.remove(path)
                c = sorted(clocks, key=lambda k: k.wall[1])[len(clocks) // 2]  # the median read
                ssh_column = "-" if c.pid is None else f"{100 * c.ssh[0] / mb:.2f} / {100 * c.ssh[1] / mb:.2f}"
                print(
                    f"| {name} | {ciphers} | {mb / c.wall[0]:.0f} | {mb / c.wall[1]:.0f} "
                    f"| {100 * c.py[0] / mb:.2f} / {100 * c.py[1] / mb:.2f} "
                    f"| {ssh_column} | {os.getloadavg()[0]:.1f} |",
                    flush=True,
                )
            for transport in self.transports:
                transport.close()
            self.transports = []

    def ssh_stream(self, ciphers: str) -> tuple[Any, int | None]:
        proc = SSHProcess(self.argv(ciphers), 30)
        return proc, proc.pid

    def ssh_paramiko_client(self, ciphers: str) -> tuple[Any, int | None]:
        stream, pid = self.ssh_stream(ciphers)
        return paramiko.SFTPClient(Pipes(stream)), pid

    def channel_stream(self, ciphers: str) -> tuple[Any, int | None]:
        transport = self.paramiko_transport(ciphers)
        self.transports.append(transport)
        channel = transport.open_session(window_size=8 * MiB, max_packet_size=MAX_CHUNK + 1024)
        channel.invoke_subsystem("sftp")
        return _Channel(channel), None

    def paramiko_client(self, ciphers: str) -> tuple[Any, int | None]:
        transport = self.paramiko_transport(ciphers)
        self.transports.append(transport)
        return paramiko.SFTPClient.from_transport(transport, window_size=8 * MiB), None

    # --- the backend's pool ---

    def pool(self) -> None:
        files, each = max(1, self.size // (8 * MiB)), 8 * MiB
        print(f"\n## SFTPBackend: {files} files of 8 MiB loaded twice from {self.args.threads} threads\n")
        print("| transport | ciphers | sessions | MB/s | Python CPU s/100 MB | ssh CPU s/100 MB | load |")
        print("|---|---|---|---|---|---|---|")
        s = self.server
        # paramiko through SFTPBackend always prefers AES-GCM (connect.py)
        for transport, cipher_choices in (("openssh", list(CIPHERS)), ("paramiko", ["aes-gcm"])):
            for ciphers in cipher_choices:
                for sessions in (1, 2, 4):
                    backend = SFTPBackend(
                        "127.0.0.1",
                        str(s.root / f"pool-{transport}-{ciphers}-{sessions}"),
                        user=s.user,
                        port=s.port,
                        key_filename=str(s.client_key),
                        known_hosts=str(s.known_hosts),
                        connections=sessions,
                        transport=transport,
                        ssh_args=["-F", "/dev/null", "-c", CIPHERS[ciphers]],
                    )
                    backend.create()
                    names = []
                    for i in range(files):
                        name = f"{i:064x}"
                        backend.save(FileType.DATA, name, os.urandom(each))
                        names.append(name)
                    children = resource.getrusage(resource.RUSAGE_CHILDREN)
                    before = cpu()
                    started = time.perf_counter()
                    with ThreadPoolExecutor(self.args.threads) as threads:
                        total = sum(threads.map(partial(_load_size, backend), names * 2))
                    took = time.perf_counter() - started
                    py = cpu() - before
                    backend.close()  # reaps the ssh processes: their CPU time is counted now
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    ssh = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
                    mb = total / 1e6
                    ssh_column = f"{100 * ssh / mb:.2f}" if transport == "openssh" else "-"
                    print(
                        f"| {transport} | {ciphers} | {sessions} | {mb / took:.0f} | {100 * py / mb:.2f} | "
                        f"{ssh_column} | {os.getloadavg()[0]:.1f} |",
                        flush=True,
                    )

    # --- the CLIs, backupfs and restic ---

    def cli_commands(self) -> dict[str, tuple[list[str], dict[str, str], Callable[[Path], str]]]:
        """name: (argv prefix without the repository, environment, repository argument of a path)."""
        s = self.server
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUPFS_", "RESTIC_"))}
        env.pop("SSH_AUTH_SOCK", None)  # only the server's key
        ours = {**env, "BACKUPFS_PASSWORD": PASSWORD, "XDG_CACHE_HOME": str(self.work / "cache-backupfs")}
        theirs = {**env, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(self.work / "cache-restic")}
        options = ["-o", f"sftp_key={s.client_key}", "-o", f"sftp_known_hosts={s.known_hosts}"]
        options += ["-o", "sftp_args=-F /dev/null"]
        ssh = (
            f"ssh -F /dev/null -i {s.client_key} -o UserKnownHostsFile={s.known_hosts} -o BatchMode=yes"
            f" -p {s.port} -l {s.user}"
        )

        def restic_cmd(extra: str) -> list[str]:
            return ["restic", "-o", f"sftp.command={ssh}{extra} 127.0.0.1 -s sftp"]

        def ours_url(path: Path) -> str:
            return f"sftp://{s.user}@127.0.0.1:{s.port}/{path}"

        def restic_url(path: Path) -> str:
            return f"sftp:{s.user}@127.0.0.1:{path}"

        backupfs = [sys.executable, "-m", "backupfs", *options]
        return {
            "backupfs, openssh": (backupfs, ours, ours_url),
            "backupfs, paramiko": ([*backupfs, "-o", "sftp_transport=paramiko"], ours, ours_url),
            "restic": (restic_cmd(""), theirs, restic_url),
            "restic, AES-GCM": (restic_cmd(" -c aes128-gcm@openssh.com"), theirs, restic_url),
        }

    def restic(self) -> None:
        if shutil.which("restic") is None:
            print("\n## restic: not installed, section skipped")
            return
        tree = self.work / "tree"
        gen_mixed(tree, self.args.scale, ByteSource(SEED))
        size = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file() and not f.is_symlink())
        version = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()
        print(f"\n## The CLIs on one sshd: the mixed tree at scale {self.args.scale} ({size / 1e6:.0f} MB), {version}")
        print(f"## median of {self.args.repeat}; CPU = the tool and its ssh processes (sshd not counted)\n")
        print("| tool, transport | backup s | backup CPU s | restore s | restore CPU s | repository MB | load |")
        print("|---|---|---|---|---|---|---|")
        for name, (argv, env, url) in self.cli_commands().items():
            rows = []
            for i in range(self.args.repeat):
                repo = self.server.root / f"cli-{name.replace(', ', '-').replace(' ', '')}-{i}"
                target = self.work / "restored"
                shutil.rmtree(target, ignore_errors=True)
                where = ["-r", url(repo)]
                _timed([*argv, *where, "init"], env)
                backup = _timed([*argv, *where, "backup", str(tree)], env)
                restore = _timed([*argv, *where, "restore", "latest", "--target", str(target)], env)
                _same_tree(tree, target / str(tree).lstrip("/"))
                stored = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())
                rows.append((backup, restore, stored))
                shutil.rmtree(repo)
            (b_wall, b_cpu), (r_wall, r_cpu), stored = sorted(rows, key=lambda r: r[1][0])[len(rows) // 2]
            print(
                f"| {name} | {b_wall:.1f} | {b_cpu:.1f} | {r_wall:.1f} | {r_cpu:.1f} | {stored / 1e6:.0f} "
                f"| {os.getloadavg()[0]:.1f} |",
                flush=True,
            )

    def run(self) -> None:
        reason = ensure_sshd()
        if reason:
            sys.exit(reason)
        self.server.start()
        try:
            if "clients" in self.args.only:
                self.clients()
            if "pool" in self.args.only:
                self.pool()
            if "restic" in self.args.only:
                self.restic()
        finally:
            self.server.stop()
            shutil.rmtree(self.work, ignore_errors=True)


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (the command and every child it reaped: its ssh processes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stderr.decode(errors='replace')[-2000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _same_tree(a: Path, b: Path) -> None:
    """The restore is complete: every regular file there, with the same bytes."""
    for f in a.rglob("*"):
        if f.is_file() and not f.is_symlink():
            other = b / f.relative_to(a)
            if not filecmp.cmp(f, other, shallow=False):
                sys.exit(f"restored {other} differs from {f}")


def _load_size(backend: SFTPBackend, name: str) -> int:
    return len(backend.load(FileType.DATA, name))


class _Channel:
    """A paramiko channel as a protocol.Stream (the same as connect.py's)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def write(self, parts: Any) -> None:
        self.channel.sendall(b"".join(parts))

    def read_into(self, view: memoryview) -> int:
        data = self.channel.recv(len(view))
        if not data:
            raise EOFError
        view[: len(data)] = data
        return len(data)

    def shutdown(self) -> None:
        self.channel.close()

    def close(self) -> None:
        self.channel.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="MiB per measurement (default 256)")
    p.add_argument("--repeat", type=int, default=3, help="runs per client; the median is shown (default 3)")
    p.add_argument("--threads", type=int, default=4, help="threads loading in the pool section (default 4)")
    p.add_argument("--scale", type=float, default=0.1, help="restic section: corpus scale (default 0.1, ~200 MB)")
    p.add_argument("--only", default="clients,pool,restic", help="sections: clients, pool, restic")
    Bench(p.parse_args()).run()


if __name__ == "__main__":
    main()
