"""`backupfs [global options] COMMAND ...`: parse, dispatch, and turn errors into exit codes."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from backupfs import __version__
from backupfs.cli import (
    backup,
    cat,
    check,
    copy,
    forget,
    init,
    key,
    ls,
    mount,
    prune,
    restore,
    serve,
    snapshots,
    unlock,
)
from backupfs.errors import BackupfsError

COMMANDS = [init, backup, snapshots, ls, cat, restore, check, mount, forget, prune, key, unlock, serve, copy]


def _add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Global options go before or after the command, as with restic."""

    def d(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("-r", "--repo", default=d(None), help="repository location (env BACKUPFS_REPOSITORY)")
    parser.add_argument("--repository-file", default=d(None), help="file holding the repository location")
    parser.add_argument(
        "-p", "--password-file", default=d(None), help="file holding the password (env BACKUPFS_PASSWORD_FILE)"
    )
    parser.add_argument("--password-command", default=d(None), help="command printing the password")
    parser.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
    parser.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no progress output")
    parser.add_argument(
        "--no-lock", action="store_true", default=d(False), help="do not lock the repository (read-only commands)"
    )
    parser.add_argument("--retry-lock", type=float, default=d(0), metavar="SECONDS", help="wait this long for a lock")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backupfs",
        description="Deduplicating, encrypted, versioned backups you can mount.",
    )
    _add_global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"backupfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    for subparser in sub.choices.values():
        _add_global_options(subparser, suppress=True)
        for action in subparser._actions:  # nested commands (`key list --json`) take them too
            if isinstance(action, argparse._SubParsersAction):
                for nested in action.choices.values():
                    _add_global_options(nested, suppress=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BackupfsError as exc:
        sys.stderr.write(f"backupfs: {exc}\n")
        code = exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("backupfs: interrupted\n")
        code = 130
    except BrokenPipeError:
        # `backupfs ls ... | head`: the reader left; say nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 128 + signal.SIGPIPE
    except OSError as exc:
        where = f" {exc.filename!r}" if exc.filename else ""
        sys.stderr.write(f"backupfs: {exc.strerror or exc}{where}\n")
        code = 1
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("BACKUPFS_DEBUG"):
            traceback.print_exc()
        sys.stderr.write(f"backupfs: internal error: {type(exc).__name__}: {exc} (set BACKUPFS_DEBUG=1 for details)\n")
        code = 1
    return code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
