"""SFTP over paramiko's SSH: ~/.ssh/config, host keys, and one-line connect errors.

paramiko's encryption runs in Python, in one thread per connection: slower than the OpenSSH
client (openssh.py), kept for systems without one. `connect` returns a SessionPool whose
sessions are channels of one SSH transport, each running our SFTP client (protocol.py).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Final

import paramiko

from backupfs.backends.sftp.pool import SessionPool, SessionRefused
from backupfs.backends.sftp.protocol import MAX_CHUNK, Session, describe
from backupfs.errors import BackendError, TransientBackendError

log = logging.getLogger(__name__)
# paramiko logs a dropped connection ("Socket exception: Connection reset by peer", sometimes
# with a traceback) from its transport thread; every such failure already reaches the caller as
# a TransientBackendError. Without a handler of its own, Python's last-resort handler would print
# those records to a CLI user's stderr next to our one-line error; a NullHandler stops that, and
# logging an application sets up (mount's) still receives them.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# AES-GCM costs paramiko less CPU than its default AES-CTR + HMAC (measured ~1.3x throughput).
_PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_WINDOW: Final = 8 * 1024 * 1024  # SSH channel receive window: larger than what is in flight
_PACKET: Final = MAX_CHUNK + 1024  # largest SSH packet we accept: a whole read reply
_KEEPALIVE: Final = 15  # seconds between SSH keepalives: NAT and firewalls keep idle connections
_TIMED_OUT_SHARE: Final = 0.9  # a failure this close to the timeout is the timeout


class _AcceptUnknownHost(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """sftp_strict_host_keys=False: accept a host missing from known_hosts (a changed key is
    still rejected), with a log line instead of paramiko's warnings.warn."""

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        log.warning("not verifying the %s host key of %s (not in known_hosts)", key.get_name(), hostname)


class _UnknownHost(paramiko.SSHException):  # type: ignore[misc]
    pass


class _RejectUnknownHost(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise _UnknownHost(hostname)


def ssh_config_for(host: str, path: str | None = None) -> dict[str, Any]:
    """The ~/.ssh/config settings OpenSSH would use for `host` (alias, user, port, identity)."""
    path = path or os.path.expanduser("~/.ssh/config")
    if not os.path.exists(path):
        return {}
    try:
        found: dict[str, Any] = dict(paramiko.SSHConfig.from_path(path).lookup(host))
        return found
    except Exception as exc:  # an unsupported directive must not make the repository unusable
        log.warning("ignoring %s: %s", path, exc)
        return {}


def connect(
    host: str,
    port: int,
    user: str,
    key_filename: str | None,
    known_hosts: str | None,
    strict_host_keys: bool,
    connections: int,
    timeout: float,
) -> SessionPool:
    """An authenticated SSH connection with a pool of up to `connections` SFTP sessions."""
    where = f"{user}@{host}:{port}"
    if key_filename and not os.path.exists(key_filename):
        raise BackendError(f"SFTP identity file {key_filename} does not exist")
    ssh = paramiko.SSHClient()
    started = time.monotonic()
    try:
        if known_hosts:
            if not os.path.exists(known_hosts):
                raise BackendError(f"known-hosts file {known_hosts} does not exist")
            ssh.load_host_keys(known_hosts)
        else:
            ssh.load_system_host_keys()  # ~/.ssh/known_hosts
        ssh.set_missing_host_key_policy(_RejectUnknownHost() if strict_host_keys else _AcceptUnknownHost())
        ssh.connect(
            host,
            port=port,
            username=user,
            key_filename=key_filename,
            look_for_keys=key_filename is None,
            allow_agent=True,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            transport_factory=_transport,
        )
        ssh.get_transport().set_keepalive(_KEEPALIVE)
    except BaseException as exc:
        ssh.close()
        if isinstance(exc, BackendError | KeyboardInterrupt | SystemExit):
            raise
        timed_out = time.monotonic() - started >= _TIMED_OUT_SHARE * timeout
        raise connect_error(exc, where, known_hosts, timed_out) from exc
    return SessionPool(_ParamikoCarrier(ssh, timeout), connections, timeout)


class _ChannelStream:
    """An SSH channel running the sftp subsystem, as a protocol.Stream."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def write(self, parts: Sequence[bytes | memoryview]) -> None:
        try:
            self.channel.sendall(b"".join(parts))
        except paramiko.SSHException as exc:
            raise EOFError(describe(exc)) from exc

    def read_into(self, view: memoryview) -> int:
        try:
            data = self.channel.recv(len(view))
        except paramiko.SSHException as exc:
            raise EOFError(describe(exc)) from exc
        if not data:
            raise EOFError("the server closed the connection")
        view[: len(data)] = data
        return len(data)

    def shutdown(self) -> None:
        # Closing sends a message; on a connection whose socket failed before paramiko's reader
        # noticed, that raises. There is nothing left to close then.
        with contextlib.suppress(EOFError, OSError, paramiko.SSHException):
            self.channel.close()

    def close(self) -> None:
        self.shutdown()


class _ParamikoCarrier:
    """SFTP sessions as channels of one paramiko SSH transport."""

    def __init__(self, ssh: Any, timeout: float) -> None:
        self.ssh = ssh
        self.transport = ssh.get_transport()
        self.timeout = timeout

    def open_session(self) -> Session:
        try:
            channel = self.transport.open_session(window_size=_WINDOW, max_packet_size=_PACKET, timeout=self.timeout)
            channel.settimeout(self.timeout)
            channel.invoke_subsystem("sftp")
        except paramiko.SSHException as exc:
            if not self.transport.is_active():
                raise EOFError(describe(exc)) from exc
            # The connection is fine, so the server refused the channel. (paramiko does not
            # always say so: concurrent opens can swap their ChannelExceptions.)
            raise SessionRefused(describe(exc)) from exc
        session = Session(_ChannelStream(channel), self.timeout)
        try:
            session.handshake()
        except BaseException:
            session.close()
            raise
        return session

    def alive(self) -> bool:
        return bool(self.transport.is_active())

    def close(self) -> None:
        self.ssh.close()


def _transport(sock: Any, **kwargs: Any) -> Any:
    """A paramiko Transport that prefers the ciphers cheapest for it, when the server has them."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    preferred = [c for c in _PREFERRED_CIPHERS if c in options.ciphers]
    options.ciphers = tuple(preferred + [c for c in options.ciphers if c not in preferred])
    return transport


def default_user() -> str:
    return getpass.getuser()


def connect_error(exc: BaseException, where: str, known_hosts: str | None, timed_out: bool = False) -> BackendError:
    hosts_file = known_hosts or "~/.ssh/known_hosts"
    if isinstance(exc, _UnknownHost):
        return BackendError(
            f"cannot connect to {where}: host key not in {hosts_file}; add it (ssh-keyscan) "
            "or set sftp_strict_host_keys=no"
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return BackendError(f"cannot connect to {where}: host key differs from {hosts_file} (possible attack)")
    if isinstance(exc, paramiko.AuthenticationException):
        return BackendError(f"cannot connect to {where}: authentication failed ({describe(exc)})")
    if isinstance(exc, OSError) and exc.__class__.__name__ == "gaierror":
        return BackendError(f"cannot connect to {where}: unknown host ({describe(exc)})")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        # paramiko's own text is "[Errno None] Unable to connect to port 22 on 10.0.0.1"; say why.
        reasons = sorted({(e.strerror or describe(e)).lower() for e in exc.errors.values()})
        return TransientBackendError(f"cannot connect to {where}: {', '.join(reasons) or describe(exc)}")
    if isinstance(exc, OSError | EOFError | paramiko.SSHException):
        if timed_out:
            # A silent server fails the handshake with whichever of paramiko's waits ends first
            # ("Error reading SSH protocol banner", "No existing session", ...): say what happened.
            return TransientBackendError(f"cannot connect to {where}: the server did not answer (timed out)")
        return TransientBackendError(f"cannot connect to {where}: {describe(exc)}")
    return BackendError(f"cannot connect to {where}: {describe(exc)}")
