"""`backupfs serve`: start-up checks, hypercorn on trio, and a clean stop on a signal.

Everything that can be wrong with the options is found before serving starts, each with one
line: a malformed value is a usage error (exit 2: fix the configuration, restarting will not
help); an address that cannot be listened on (in use, not this machine's, a host name that does
not resolve) is exit 1 (it may go away). The listening socket is bound here rather than by
hypercorn, whose errors arrive wrapped in trio's exception groups.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import resource
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Final

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from backupfs.errors import BackupfsError, UsageError
from backupfs.server.app import RestApp
from backupfs.server.auth import Htpasswd

# Clients keep pooled connections through long CPU stretches (seconds) between requests.
KEEP_ALIVE_SECONDS: Final = 120
# A client silent this long in the middle of a request is gone: its upload is freed.
READ_TIMEOUT_SECONDS: Final = 120
# On a stop signal, requests in flight get this long to finish; then they are cancelled and
# their temporary files removed.
GRACEFUL_SECONDS: Final = 5
BACKLOG: Final = 128
MAX_PORT: Final = 65535
# SIGINT (Ctrl-C), SIGTERM (systemd's stop), SIGHUP (a closed terminal): all stop it cleanly
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclasses.dataclass
class ServerOptions:
    path: str
    listen: str = "127.0.0.1:8000"
    append_only: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    htpasswd: str | None = None
    private_repos: bool = False


@dataclasses.dataclass
class Prepared:
    """A server ready to run: its application, hypercorn's settings, and its listening socket."""

    app: RestApp
    config: HypercornConfig
    listener: socket.socket


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT -> (host, port); an empty host means every IPv4 interface."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        raise UsageError(f"--listen {listen}: expected HOST:PORT, as in 127.0.0.1:8000")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"--listen {listen}: an IPv6 address goes in brackets, as in [::1]:8000")
    if not (port.isascii() and port.isdigit()) or int(port) > MAX_PORT:
        raise UsageError(f"--listen {listen}: the port must be a number from 0 to {MAX_PORT}")
    return host, int(port)


def bind(listen: str) -> socket.socket:
    """A listening socket on `listen`; BackupfsError (exit 1) with the system's reason if not."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        found = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BackupfsError(f"cannot listen on {listen}: {exc.strerror}") from exc
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart while old connections linger
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(found[0][4])
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BackupfsError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    return sock


def check_path(path: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"--path {path}: no such directory")
    if not os.path.isdir(path):
        raise UsageError(f"--path {path}: not a directory")
    effective = os.access in os.supports_effective_ids
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK, effective_ids=effective):
        raise UsageError(f"--path {path}: not writable by this user (the server stores uploads there)")


def hypercorn_config(opts: ServerOptions) -> HypercornConfig:
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    config.read_timeout = READ_TIMEOUT_SECONDS
    config.graceful_timeout = GRACEFUL_SECONDS
    config.backlog = BACKLOG
    config.include_server_header = False
    if opts.tls_cert or opts.tls_key:
        if not (opts.tls_cert and opts.tls_key):
            raise UsageError("--tls-cert and --tls-key go together")
        config.certfile, config.keyfile = opts.tls_cert, opts.tls_key
        try:
            config.create_ssl_context()
        except (OSError, ValueError) as exc:
            reason = "not a matching PEM certificate and key"
            if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.strerror:
                reason = exc.strerror
            raise UsageError(f"cannot load --tls-cert {opts.tls_cert} / --tls-key {opts.tls_key}: {reason}") from exc
    return config


def prepare(opts: ServerOptions, log: Callable[[str], None]) -> Prepared:
    """Checks every option, then binds: the first problem found ends start-up with one line."""
    parse_listen(opts.listen)
    check_path(opts.path)
    if opts.private_repos and not opts.htpasswd:
        raise UsageError("--private-repos needs --htpasswd (users must be known)")
    htpasswd = Htpasswd(opts.htpasswd) if opts.htpasswd else None
    config = hypercorn_config(opts)
    app = RestApp(
        opts.path, append_only=opts.append_only, htpasswd=htpasswd, private_repos=opts.private_repos, log=log
    )
    listener = bind(opts.listen)
    for warning in htpasswd.warnings if htpasswd else []:
        log(f"warning: {warning}")
    if htpasswd is None and not _is_loopback(listener):
        log("warning: serving without --htpasswd: anyone who can connect can read and write")
    return Prepared(app, config, listener)


def _is_loopback(sock: socket.socket) -> bool:
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    except ValueError:
        return False


async def serve(
    prepared: Prepared,
    shutdown_trigger: Callable[[], Awaitable[None]],
    log: Callable[[str], None],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ready: Callable[[list[str]], None] = lambda _binds: None,
) -> None:
    """Serves until `shutdown_trigger` returns, then gives requests in flight GRACEFUL_SECONDS;
    `ready` gets the addresses once they accept connections."""
    config, sock = prepared.config, prepared.listener
    secure = config.ssl_enabled
    sockets = Sockets(secure_sockets=[sock] if secure else [], insecure_sockets=[] if secure else [sock], quic_sockets=[])
    app = wrap_app(prepared.app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            functools.partial(worker_serve, app, config, sockets=sockets, shutdown_trigger=shutdown_trigger)
        )
        mode = " (append-only)" if prepared.app.append_only else ""
        log(f"backupfs: serving {prepared.app.root} on {', '.join(binds)}{mode}")
        ready(list(binds))
        task_status.started(binds)


async def serve_until_signal(
    prepared: Prepared, log: Callable[[str], None], ready: Callable[[list[str]], None] = lambda _binds: None
) -> int:
    """Serves until SIGINT, SIGTERM or SIGHUP; returns that signal's number."""
    received = 0
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:

        async def shutdown_trigger() -> None:
            nonlocal received
            async for signum in signals:
                received = signum
                return

        # the receiver stays open until every request has ended: a second signal is ignored
        await serve(prepared, shutdown_trigger, log, ready=ready)
    return received


def run(
    opts: ServerOptions,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    ready: Callable[[list[str]], None] = lambda _binds: None,
) -> int:
    """Checks the options, serves until a stop signal, and returns its number; `ready` gets the
    addresses once they accept connections."""
    _raise_open_files_limit()
    prepared = prepare(opts, log)
    try:
        return trio.run(serve_until_signal, prepared, log, ready)
    except BaseExceptionGroup as group:
        # trio wraps what ended the server in nursery groups: report that one error, on one line
        raise _sole(group) from None
    finally:
        prepared.listener.close()


def _raise_open_files_limit() -> None:
    """Each connection and each upload holds a descriptor; the usual soft limit (1024) would let
    a few hundred idle connections refuse everyone else. Raised to the hard limit, as any
    server does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The only exception inside nested groups, else the group itself."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group
