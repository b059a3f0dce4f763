"""A pool of SFTP sessions over one connection, shared by the backend's threads.

The pool knows nothing of how a session is carried: a `Carrier` opens sessions (channels of
paramiko's SSH transport, connect.py; ssh processes, openssh.py) and says whether its
connection still lives.
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
    """Up to `size` sessions over one carrier, shared by the threads that use the backend.

    A thread gets the session with the fewest users; another session is opened only when every
    open one already has a user, up to `size` (fewer if the server refuses more). A session
    keeps many requests in flight for all of its users, so more sessions add parallel work on
    the server and more encryption capacity (OpenSSH: processes), not requests in flight.
    """

    def __init__(self, carrier: Carrier, size: int, timeout: float) -> None:
        self.carrier = carrier
        self.timeout = timeout
        self.broken = False
        self.chunks: tuple[int, int] | None = None  # (read, write) request sizes, probed once
        self._limit = size
        self._sessions: list[Session] = []
        self._opening = 0
        self._cond = threading.Condition()

    def alive(self) -> bool:
        return not self.broken and self.carrier.alive() and not any(s.broken for s in self._sessions)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def acquire(self) -> Session:
        deadline = time.monotonic() + self.timeout
        while True:
            with self._cond:
                while True:
                    if not self.alive():
                        raise TransientBackendError("SFTP connection lost")
                    best = min(self._sessions, key=lambda s: s.users, default=None)
                    if len(self._sessions) + self._opening < self._limit and (best is None or best.users > 0):
                        self._opening += 1  # open one more, outside the lock
                        break
                    if best is not None:
                        best.users += 1
                        return best
                    left = deadline - time.monotonic()  # the first session is being opened
                    if left <= 0:
                        raise TransientBackendError("timed out waiting for an SFTP session")
                    self._cond.wait(left)
            try:
                session = self._new_session()
            except SessionRefused:
                with self._cond:
                    self._opening -= 1
                    self._cond.notify_all()
                    if not self._sessions and not self._opening:
                        raise SessionRefused("the server refused every SFTP session") from None
                    # The server caps sessions per connection (OpenSSH MaxSessions, MaxStartups):
                    # share the ones it granted.
                    self._limit = len(self._sessions) + self._opening
                    limit = self._limit
                log.info("the SFTP server allows at most %d sessions", limit)
                continue
            except BaseException:
                with self._cond:
                    self._opening -= 1
                    self._cond.notify_all()
                raise
            with self._cond:
                self._opening -= 1
                self._cond.notify_all()
                if not self.broken:
                    session.users = 1
                    self._sessions.append(session)
                    return session
            session.close()
            raise TransientBackendError("SFTP connection closed")

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

    def release(self, session: Session) -> None:
        with self._cond:
            session.users -= 1
            last = self.broken and not session.users and session in self._sessions
            if last:
                self._sessions.remove(session)
            self._cond.notify_all()
        if last:
            session.close()

    def close(self) -> None:
        """End every session; those in use release their resources when given back."""
        with self._cond:
            self.broken = True
            sessions = list(self._sessions)
            idle = [s for s in sessions if not s.users]
            self._sessions = [s for s in sessions if s.users]
            self._cond.notify_all()
        for session in sessions:
            session.shutdown()
        for session in idle:
            session.close()
        with contextlib.suppress(Exception):
            self.carrier.close()
