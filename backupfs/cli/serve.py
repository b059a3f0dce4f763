"""`backupfs serve`: share repository directories with `rest:` clients (docs/server.md)."""

from __future__ import annotations

import argparse
import signal

from backupfs.cli._output import err, print_json
from backupfs.errors import Terminated
from backupfs.server.run import ServerOptions
from backupfs.server.run import run as run_server


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="serve repositories over HTTP (for rest: clients)")
    p.add_argument("--path", required=True, help="directory holding the repositories (a repository itself, or many)")
    p.add_argument("--listen", default="127.0.0.1:8000", metavar="HOST:PORT", help="default 127.0.0.1:8000")
    p.add_argument(
        "--append-only",
        action="store_true",
        help="clients may add files but never delete or replace them (locks aside)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain); serve HTTPS")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    p.add_argument("--htpasswd", metavar="FILE", help="require HTTP basic auth against this file (bcrypt: htpasswd -B)")
    p.add_argument("--private-repos", action="store_true", help="each user may only use repositories under /USER/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts = ServerOptions(
        path=args.path,
        listen=args.listen,
        append_only=args.append_only,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        htpasswd=args.htpasswd,
        private_repos=args.private_repos,
    )

    def ready(binds: list[str]) -> None:
        if args.json:  # a script waits for this line before it connects
            print_json({"message_type": "serving", "path": args.path, "addresses": binds})

    signum = run_server(opts, err, ready)
    # stopped by a signal, after finishing (or cancelling) the requests in flight: the command
    # ends as every other does on it (one line; exit 130, 143 or 129)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    if signum:
        raise Terminated(signum)
    return 0
