"""`backupfs serve`: hypercorn on trio, serving the RestApp until SIGINT or SIGTERM."""

from __future__ import annotations

import dataclasses
import os
import signal
import ssl
import sys
from collections.abc import Callable
from typing import Final

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from backupfs.errors import BackupfsError, UsageError
from backupfs.server.app import RestApp
from backupfs.server.auth import Htpasswd

# Clients keep pooled connections through long CPU stretches (seconds) between requests.
KEEP_ALIVE_SECONDS: Final = 120
# A client silent this long in the middle of a request is gone: its upload is freed.
READ_TIMEOUT_SECONDS: Final = 120
# On SIGINT/SIGTERM, requests in flight get this long to finish.
GRACEFUL_SECONDS: Final = 5


@dataclasses.dataclass
class ServerOptions:
    path: str
    listen: str = "127.0.0.1:8000"
    append_only: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    htpasswd: str | None = None
    private_repos: bool = False


def _hypercorn_config(opts: ServerOptions) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [opts.listen]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    config.read_timeout = READ_TIMEOUT_SECONDS
    config.graceful_timeout = GRACEFUL_SECONDS
    config.include_server_header = False
    if opts.tls_cert or opts.tls_key:
        if not (opts.tls_cert and opts.tls_key):
            raise UsageError("--tls-cert and --tls-key go together")
        config.certfile, config.keyfile = opts.tls_cert, opts.tls_key
    return config


def build_app(opts: ServerOptions, log: Callable[[str], None]) -> RestApp:
    if not os.path.isdir(opts.path):
        raise UsageError(f"--path {opts.path}: not a directory")
    htpasswd = Htpasswd(opts.htpasswd) if opts.htpasswd else None
    for warning in htpasswd.warnings if htpasswd else []:
        log(f"warning: {warning}")
    return RestApp(
        opts.path, append_only=opts.append_only, htpasswd=htpasswd, private_repos=opts.private_repos, log=log
    )


async def serve(
    opts: ServerOptions,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    ready: Callable[[list[str]], None] = lambda _binds: None,
) -> None:
    """Serves until SIGINT or SIGTERM, then finishes running requests (up to 5 s) and returns;
    `ready` gets the addresses once they accept connections."""
    app = build_app(opts, log)
    config = _hypercorn_config(opts)
    if config.ssl_enabled:
        try:
            config.create_ssl_context()
        except (OSError, ValueError) as exc:
            reason = "not a matching PEM certificate and key"
            if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.strerror:
                reason = exc.strerror
            raise UsageError(f"cannot load --tls-cert {opts.tls_cert} / --tls-key {opts.tls_key}: {reason}") from exc
    if opts.htpasswd is None and not opts.listen.startswith(("127.", "localhost:", "[::1]:")):
        log("warning: serving without --htpasswd: anyone who can connect can read and write")

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def shutdown_trigger() -> None:
            async for _sig in signals:
                return

        async with trio.open_nursery() as nursery:
            try:
                binds = await nursery.start(
                    lambda task_status: hypercorn_serve(
                        app,  # type: ignore[arg-type]
                        config,
                        shutdown_trigger=shutdown_trigger,
                        task_status=task_status,
                    )
                )
            except OSError as exc:
                raise BackupfsError(f"cannot listen on {opts.listen}: {exc.strerror or exc}") from exc
            mode = " (append-only)" if opts.append_only else ""
            log(f"backupfs: serving {app.root} on {', '.join(binds)}{mode}")
            ready(list(binds))
