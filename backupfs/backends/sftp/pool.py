"""A pool of SFTP sessions over one connection, lent to one thread at a time.

One SSH connection carries several SFTP sessions (channels), so several threads have requests
in flight at once. The pool knows nothing of how a session is carried: a `Carrier` opens
sessions over one connection (paramiko's SSH transport, connect.py; later the pipes of an
OpenSSH client) and says whether that connection still lives.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Protocol

from backupfs.backends.sftp.protocol import Session
from backupfs.errors import TransientBackendError

log = logging.getLogger(__name__)


class SessionRefused(Exception):
    """The server declined a new session while the connection itself is fine."""


class Carrier(Protocol):
    """One connection to an SFTP server, able to open sessions over it."""

    def open_session(self) -> Session:
        """A new session; SessionRefused if the server declines it but the connection lives.

        Any other exception means the connection is broken."""

    def alive(self) -> bool: ...

    def close(self) -> None: ...


class SessionPool:
    """Up to `size` sessions over one carrier; fewer if the server grants fewer."""

    def __init__(self, carrier: Carrier, size: int, timeout: float) -> None:
        self.carrier = carrier
        self.timeout = timeout
        self.broken = False
        self.chunks: tuple[int, int] | None = None  # (read, write) request sizes, probed once
        self._limit = size
        self._open = 0
        self._idle: list[Session] = []
        self._cond = threading.Condition()

    def alive(self) -> bool:
        return not self.broken and self.carrier.alive()

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
            except SessionRefused:
                with self._cond:
                    self._open -= 1
                    self._cond.notify_all()
                    if self._open == 0:
                        raise SessionRefused("the server refused every SFTP session") from None
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
        session = self.carrier.open_session()
        try:
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
            self.carrier.close()
