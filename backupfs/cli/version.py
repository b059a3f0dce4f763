"""`backupfs version`: the program's version and what it runs on, as `restic version`."""

from __future__ import annotations

import argparse
import platform
import sys

from backupfs import __version__
from backupfs.cli._output import print_json


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("version", help="print version information")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    python = platform.python_version()
    system, machine = sys.platform, platform.machine()
    if args.json:
        print_json(
            {
                "message_type": "version",
                "version": __version__,
                "python_version": python,
                "os": system,
                "arch": machine,
            }
        )
    else:
        print(f"backupfs {__version__} running on Python {python} on {system}/{machine}")
    return 0
