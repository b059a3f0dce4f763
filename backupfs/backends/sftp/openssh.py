"""SFTP through the system's OpenSSH client: `ssh [options] -s -- HOST sftp`, one process a session.

Everything the user's ssh configuration says then applies (ProxyJump, ControlMaster, agents,
FIDO and hardware keys, certificates, ciphers), and encryption runs in the ssh processes, beside
our Python. Each session of the pool is one ssh process (one SSH connection, or one channel of
a ControlMaster connection) shared by any number of threads: a second process adds encryption
capacity (one ssh costs about as much CPU per byte as our side), and a `sftp-server` of its own
on the far side, so the server's disk works on two requests at once.

Processes are started in a session of their own (no controlling terminal: ssh can never prompt,
and Ctrl-C at the terminal reaches backupfs alone, which then still has its connection to remove
its lock), with BatchMode on, and killed on close; one whose backupfs vanished without closing
gets EOF on its stdin and exits. What ssh prints on stderr is kept (the last few KiB, drained
while we wait for the server) and turned into one line when it fails.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import math
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Final

from backupfs.backends.sftp.pool import SessionPool, SessionRefused
from backupfs.backends.sftp.protocol import CONNECTION_ERRORS, ProtocolError, Session, describe
from backupfs.errors import BackendError, TransientBackendError

log = logging.getLogger(__name__)

_PIPE_SIZE: Final = 1024 * 1024  # fewer wake-ups per MiB; Linux allows up to pipe-max-size (1 MiB)
_STDERR_KEPT: Final = 8192  # last bytes of ssh's stderr kept for the error message
_EXIT_WAIT: Final = 2.0  # seconds for a failed or closed ssh to exit before it is killed
_KEEPALIVE: Final = 15  # ServerAliveInterval: NATs keep idle connections; dead servers are noticed

# What OpenSSH's own sftp(1) passes to ssh, then ours: never prompt, time out like the rest of
# the backend, and keep idle connections alive. ssh takes the first value it sees of each
# setting, so the user's sftp_args (placed before these) win over them, and these over ssh_config.
_SFTP_LIKE: Final = (
    "-oForwardX11=no",
    "-oForwardAgent=no",
    "-oPermitLocalCommand=no",
    "-oClearAllForwardings=yes",
    "-oBatchMode=yes",
    f"-oServerAliveInterval={_KEEPALIVE}",
)


def ssh_command(
    host: str,
    *,
    user: str | None = None,
    port: int | None = None,
    key_filename: str | None = None,
    known_hosts: str | None = None,
    strict_host_keys: bool | None = None,
    timeout: float = 30.0,
    args: Sequence[str] = (),
    program: str = "ssh",
) -> list[str]:
    """The ssh command line for an SFTP session; what is not given, ssh_config decides."""
    login = (["-p", str(port)] if port is not None else []) + (["-l", user] if user else [])
    argv = [program, *args, *_SFTP_LIKE, f"-oConnectTimeout={max(1, math.ceil(timeout))}"]
    argv += fast_ciphers([program, *args, *login], host)
    if key_filename:
        argv += ["-oIdentityFile=" + _quoted(key_filename)]
    if known_hosts:
        argv += ["-oUserKnownHostsFile=" + _quoted(known_hosts)]
    if strict_host_keys is not None:
        # accept-new: an unknown host is accepted (and remembered), a changed key still refused
        argv += ["-oStrictHostKeyChecking=" + ("yes" if strict_host_keys else "accept-new")]
    return [*argv, *login, "-s", "--", host, "sftp"]


_AES_GCM: Final = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def fast_ciphers(argv: Sequence[str], host: str) -> list[str]:
    """`-oCiphers=...` with AES-GCM first, if no configuration chose the ciphers and this CPU
    has AES instructions; else nothing.

    OpenSSH puts chacha20-poly1305 first, the better choice without AES instructions; with them
    AES-GCM costs ssh (and sshd) about half the CPU time per byte (docs/backends.md). A cipher
    list anywhere in the ssh configuration, or in sftp_args, is left alone: ciphers are a
    matter of policy. `ssh -G` prints the configuration in effect without connecting.
    """
    if not cpu_has_aes():
        return []
    # Both asked at once: each `ssh -G` is a process start, and they delay the first connection.
    chosen, default = _ciphers([*argv, "-G", "--", host], [argv[0], "-F", "/dev/null", "-G", "--", host])
    if not chosen or chosen != default or not set(_AES_GCM) <= set(chosen):
        return []
    return ["-oCiphers=" + ",".join([*_AES_GCM, *(c for c in chosen if c not in _AES_GCM)])]


def _ciphers(*argvs: Sequence[str]) -> list[list[str]]:
    """The cipher list each `ssh -G` command line prints (run side by side); [] for one that fails."""
    procs: list[subprocess.Popen[bytes] | None] = []
    for argv in argvs:
        try:
            procs.append(
                subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            )
        except OSError:
            procs.append(None)
    return [_cipher_list(proc) for proc in procs]


def _cipher_list(proc: subprocess.Popen[bytes] | None) -> list[str]:
    if proc is None:
        return []
    try:
        out, _ = proc.communicate(timeout=_EXIT_WAIT * 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return []
    if proc.returncode != 0:  # an ssh without -G (before 6.8) or a bad config
        return []
    for line in out.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(" ")
        if key == "ciphers":
            return value.strip().split(",")
    return []


def cpu_has_aes() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return "aes" in value.split()
    except OSError:
        pass
    return False


def _quoted(path: str) -> str:
    """A path as an ssh option value: ssh splits values on blanks and expands % tokens."""
    return '"' + path.replace("%", "%%") + '"'


def find_ssh(program: str = "ssh") -> str | None:
    return shutil.which(program)


# --- one ssh process ---

_live: weakref.WeakSet[SSHProcess] = weakref.WeakSet()
_live_lock = threading.Lock()


@atexit.register
def _kill_leftovers() -> None:
    """Processes nobody closed (an error path that forgot): never outlive backupfs."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        proc.stop()


class SSHProcess:
    """An ssh process whose stdin and stdout are an SFTP stream (protocol.Stream).

    Every wait for the pipes is bounded by `timeout` (TimeoutError) and drains ssh's stderr, so
    a chatty ssh never blocks on a full stderr pipe and its last words are at hand."""

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        self._stderr = bytearray()
        self._stderr_lock = threading.Lock()
        self._stopped = False
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,
            )
        except OSError as exc:
            raise BackendError(f"cannot run {self.argv[0]}: {exc.strerror or describe(exc)}") from exc
        with _live_lock:
            _live.add(self)
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self._out, self._in, self._err = self.proc.stdin.fileno(), self.proc.stdout.fileno(), self.proc.stderr.fileno()
        for fd in (self._out, self._in, self._err):
            os.set_blocking(fd, False)
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):  # a smaller pipe works too, with more wake-ups
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._poll_out = select.poll()
        self._poll_in = select.poll()
        for poll, fd, event in ((self._poll_out, self._out, select.POLLOUT), (self._poll_in, self._in, select.POLLIN)):
            poll.register(fd, event)
            poll.register(self._err, select.POLLIN)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait(self, poll: select.poll, fd: int) -> None:
        """Until `fd` is ready (or hung up), draining stderr meanwhile; TimeoutError if it is not."""
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            ready = poll.poll(left * 1000)
            if any(f == fd for f, _ in ready):
                return
            if ready and not self._drain_stderr():  # stderr ended: stop watching it here
                with contextlib.suppress(KeyError):
                    poll.unregister(self._err)

    def _drain_stderr(self) -> bool:
        """Read what ssh wrote to stderr; False at its end. (The reader and a writer may both.)"""
        with self._stderr_lock:
            while True:
                try:
                    data = os.read(self._err, 65536)
                except BlockingIOError:
                    return True
                except OSError:
                    return False
                if not data:
                    return False
                self._stderr += data
                del self._stderr[:-_STDERR_KEPT]

    def write(self, parts: Sequence[bytes | memoryview]) -> None:
        pending = list(parts)
        while pending:
            try:
                sent = os.writev(self._out, pending)
            except BlockingIOError:
                self._wait(self._poll_out, self._out)
                continue
            except BrokenPipeError:
                raise EOFError(self.why_ended()) from None
            while sent:
                first = len(pending[0])
                if sent >= first:
                    pending.pop(0)
                    sent -= first
                else:
                    pending[0] = memoryview(pending[0])[sent:]
                    sent = 0

    def read_into(self, view: memoryview) -> int:
        while True:
            try:
                n = os.readv(self._in, [view])
            except BlockingIOError:
                self._wait(self._poll_in, self._in)
                continue
            if n == 0:
                raise EOFError(self.why_ended())
            return n

    def failure(self) -> str:
        """Why ssh stopped: its stderr, once it has exited (or after _EXIT_WAIT)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(_EXIT_WAIT)
        deadline = time.monotonic() + _EXIT_WAIT
        # the rest of stderr; a ProxyJump or ControlPersist child may hold it open: not for long
        while self._drain_stderr() and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.01)
        self._drain_stderr()
        return self._stderr.decode("utf-8", "replace")

    def why_ended(self) -> str:
        """What ssh's end means, in one line."""
        found = diagnose(self.failure())
        if found:
            return found[0]
        status = self.proc.returncode
        if status is not None and status < 0:
            return f"ssh was killed ({signal.Signals(-status).name})"
        return f"ssh exited with status {status}"

    @property
    def stopped(self) -> bool:
        return self._stopped

    def alive(self) -> bool:
        return not self._stopped and self.proc.poll() is None

    def shutdown(self) -> None:
        self.stop()

    def stop(self) -> None:
        """End ssh (SIGTERM, then SIGKILL) and reap it. Safe from any thread: the pipes stay
        open, so a thread using them meanwhile gets EOF, never another file's descriptor."""
        with _live_lock:
            self._stopped = True
            _live.discard(self)
        for signal_it in (self.proc.terminate, self.proc.kill):
            if self.proc.poll() is not None:
                return
            with contextlib.suppress(OSError):
                signal_it()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(_EXIT_WAIT)

    def close(self) -> None:
        """stop(), and close the pipes: only once no thread uses them."""
        self.stop()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                f.close()  # type: ignore[union-attr]


# --- ssh's errors, in one line ---

# (pattern in ssh's stderr, what it means, whether trying again later may help)
_DIAGNOSES: Final = (
    (r"REMOTE HOST IDENTIFICATION HAS CHANGED", "host key differs from {known_hosts} (possible attack)", False),
    (
        r"host key is known for|authenticity of host|Host key verification failed",
        "host key not in {known_hosts}; check and accept it with ssh once, or set sftp_strict_host_keys=no",
        False,
    ),
    (
        r"Permission denied \(([^)]*)\)",
        "authentication failed ({0}): is the key authorized there, and if it has a passphrase, in ssh-agent?",
        False,
    ),
    (r"Too many authentication failures", "authentication failed (too many keys offered: use IdentitiesOnly)", False),
    (r"subsystem request failed", "the server offers no sftp subsystem", False),
    (r"Could not resolve hostname [^:]*: Temporary failure", "cannot resolve the host name now", True),
    (r"Could not resolve hostname [^:]*: (.*)", "unknown host ({0})", False),
    (r"Connection refused", "connection refused", True),
    (r"No route to host", "no route to host", True),
    (r"Network is unreachable", "network is unreachable", True),
    (r"timed out|Timeout, server .* not responding", "the server did not answer (timed out)", True),
    (r"Connection (?:closed|reset) by", "the server closed the connection", True),
    (r"Bad configuration option|Bad owner or permissions|command-line line|Unsupported option", "{line}", False),
    (r"Load key .*: (.*)", "cannot load the key: {0}", False),
)


def diagnose(stderr: str, known_hosts: str | None = None) -> tuple[str, bool] | None:
    """(one line, transient) for what ssh printed, or None if it printed nothing useful."""
    text = stderr.replace("\r", "")
    hosts_file = known_hosts or "ssh's known_hosts files"
    for pattern, meaning, transient in _DIAGNOSES:
        m = re.search(pattern, text)
        if m is not None:
            line = next((ln for ln in text.splitlines() if m.group(0) in ln), m.group(0)).strip()
            return meaning.format(*m.groups(), known_hosts=hosts_file, line=line), transient
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(("Warning:", "**"))]
    return (lines[-1], True) if lines else None


# --- the carrier ---


class OpenSSHCarrier:
    """SFTP sessions as ssh processes. `connect()` starts the first: its failure is the
    connection's, reported in one line; a later session that fails to start is a refused one
    (the pool makes do with fewer) as long as the others still run."""

    def __init__(self, argv: Sequence[str], where: str, timeout: float, known_hosts: str | None = None) -> None:
        self.argv = list(argv)
        self.where = where
        self.timeout = timeout
        self.known_hosts = known_hosts
        self._lock = threading.Lock()
        self._procs: list[SSHProcess] = []
        self._first: Session | None = None
        self._closed = False

    def connect(self) -> None:
        self._first = self._start(first=True)

    def _start(self, first: bool) -> Session:
        proc = SSHProcess(self.argv, self.timeout)
        with self._lock:
            closed = self._closed
            if not closed:
                self._procs.append(proc)
        if closed:
            proc.close()
            raise TransientBackendError(f"{self.where}: the connection was closed meanwhile")
        session = Session(proc, self.timeout)
        try:
            session.handshake()
        except CONNECTION_ERRORS as exc:
            stderr = proc.failure() if isinstance(exc, EOFError) else ""  # it has exited: no wait
            self._forget(proc)
            error = self._error(exc, stderr, proc.proc.returncode)
            if first or not self.alive():
                raise error from exc
            raise SessionRefused(str(error)) from exc
        except BaseException:
            self._forget(proc)
            raise
        return session

    def _error(self, exc: BaseException, stderr: str, status: int | None) -> BackendError:
        where = f"cannot connect to {self.where}"
        if isinstance(exc, TimeoutError):
            return TransientBackendError(f"{where}: the server did not answer (timed out)")
        if isinstance(exc, ProtocolError):
            return BackendError(f"{where}: the server's reply is not SFTP ({exc}; does a login script print?)")
        found = diagnose(stderr, self.known_hosts)
        if found is None:
            return TransientBackendError(f"{where}: ssh exited with status {status} and said nothing")
        line, transient = found
        return (TransientBackendError if transient else BackendError)(f"{where}: {line}")

    def _forget(self, proc: SSHProcess) -> None:
        proc.close()
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)

    def open_session(self) -> Session:
        with self._lock:
            first, self._first = self._first, None
        return first if first is not None else self._start(first=False)

    def alive(self) -> bool:
        """Every ssh process still runs: one that died (server gone, killed) means reconnect."""
        with self._lock:
            return not self._closed and all(p.alive() for p in self._procs if not p.stopped)

    def close(self) -> None:
        """Stop every process; the pipes of sessions in use close when they are given back."""
        with self._lock:
            self._closed = True
            procs, self._procs = self._procs, []
            first, self._first = self._first, None
        if first is not None:
            first.close()
        for proc in procs:
            proc.stop()


def connect(
    argv: Sequence[str], where: str, connections: int, timeout: float, known_hosts: str | None = None
) -> SessionPool:
    """A pool of up to `connections` ssh processes; the first is started (and checked) now."""
    carrier = OpenSSHCarrier(argv, where, timeout, known_hosts)
    carrier.connect()
    return SessionPool(carrier, connections, timeout)
