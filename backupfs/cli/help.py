"""`backupfs help [COMMAND]`: the same text as `backupfs COMMAND --help`, as `restic help`."""

from __future__ import annotations

import argparse
import sys

from backupfs.cli._output import print_json
from backupfs.cli.main import COMMANDS, build_parser, close_matches
from backupfs.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("help", help="show the help of a command")
    p.add_argument("topic", nargs="?", metavar="COMMAND", help="the command to explain (default: list them all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.topic is None:
        _show(args, None, build_parser("").format_help())
        return 0
    if args.topic not in COMMANDS:
        close = close_matches(args.topic, list(COMMANDS))
        hint = f"; did you mean {' or '.join(close)}?" if close else " (see `backupfs help`)"
        raise UsageError(f"unknown command {args.topic!r}{hint}")
    parser = build_parser(args.topic)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    _show(args, args.topic, sub.choices[args.topic].format_help())
    return 0


def _show(args: argparse.Namespace, topic: str | None, text: str) -> None:
    if args.json:
        print_json({"message_type": "help", "command": topic, "text": text})
    else:
        sys.stdout.write(text)
