"""A pool of SFTP sessions (channels) over one SSH connection.

One SSH connection carries a small pool of SFTP sessions, so several threads have requests in
flight at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import paramiko

from backupfs.backends.sftp.protocol import MAX_CHUNK, Session
from backupfs.errors import TransientBackendError

log = logging.getLogger(__name__)

_WINDOW = 8 * 1024 * 1024  # SSH channel receive window: larger than what is in flight
_PACKET = MAX_CHUNK + 1024  # largest SSH packet we accept: a whole read reply


class Connection:
    """One SSH transport and a pool of SFTP sessions over it."""

    def __init__(self, ssh: Any, size: int, timeout: float) -> None:
        self.ssh = ssh
        self.transport = ssh.get_transport()
        self.timeout = timeout
        self.broken = False
        self.chunks: tuple[int, int] | None = None  # (read, write) request sizes, probed once
        self._limit = size
        self._open = 0
        self._idle: list[Session] = []
        self._cond = threading.Condition()

    def alive(self) -> bool:
        return not self.broken and bool(self.transport.is_active())

    def acquire(self) -> Session:
        deadline = time.monotonic() + self.timeout
        while True:
            with self._cond:
                while True:
                    if not self.alive():
                        raise TransientBackendError("SFTP connection lost")
                    if self._idle:
                        return self._idle.pop()
                    if self._open < self._limit:
                        self._open += 1  # counts sessions open or being opened
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TransientBackendError("timed out waiting for a free SFTP session")
                    self._cond.wait(left)
            try:
                return self._new_session()
            except paramiko.SSHException:
                if not self.transport.is_active():
                    with self._cond:
                        self._open -= 1
                        self._cond.notify()
                    raise
                # The connection is fine, so the server refused the channel. (paramiko does not
                # always say so: concurrent opens can swap their ChannelExceptions.)
                with self._cond:
                    self._open -= 1
                    self._cond.notify_all()
                    if self._open == 0:
                        raise paramiko.ChannelException(1, "the server refused every SFTP session") from None
                    # The server caps sessions per connection (OpenSSH MaxSessions): use the
                    # ones it granted, and wait for one of them.
                    self._limit = self._open
                    limit = self._limit
                log.info("the SFTP server allows at most %d sessions per connection", limit)
            except BaseException:
                with self._cond:
                    self._open -= 1
                    self._cond.notify()
                raise

    def _new_session(self) -> Session:
        client = paramiko.SFTPClient.from_transport(self.transport, window_size=_WINDOW, max_packet_size=_PACKET)
        if client is None:
            raise paramiko.SSHException("the server refused an SFTP session")
        session = Session(client)
        try:
            client.get_channel().settimeout(self.timeout)
            if self.chunks is None:
                self.chunks = session.limits()
        except BaseException:
            session.close()
            raise
        session.read_chunk, session.write_chunk = self.chunks
        return session

    def release(self, session: Session, healthy: bool) -> None:
        keep = False
        with self._cond:
            if healthy and self.alive():
                self._idle.append(session)
                keep = True
            else:
                self._open -= 1
            self._cond.notify()
        if not keep:
            session.close()

    def close(self) -> None:
        self.broken = True
        with self._cond:
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for session in idle:
            session.close()
        with contextlib.suppress(Exception):
            self.ssh.close()

