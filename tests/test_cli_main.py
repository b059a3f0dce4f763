"""The dispatcher: every command's help works, and its one-line help matches the listing."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from backupfs.cli.main import COMMANDS, build_parser


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_working_help(name: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "backupfs", name, "--help"], capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"usage: backupfs") and name.encode() in proc.stdout


def test_listing_matches_each_command_own_help() -> None:
    for name, (_module, helptext) in COMMANDS.items():
        parser = build_parser(name)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        registered = {c.dest: c.help for c in sub._choices_actions}
        assert registered[name] == helptext, name


def test_only_the_chosen_command_module_is_imported() -> None:
    code = (
        "import sys; from backupfs.cli.main import build_parser, _command_in;"
        "build_parser(_command_in(['-r', 'x', 'snapshots']));"
        "print(sorted(m for m in sys.modules if m.startswith(('backupfs.cli.', 'trio', 'pyfuse3', 'hypercorn'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True).stdout
    assert "backupfs.cli.snapshots" in out
    for heavy in ("'trio'", "'pyfuse3'", "'hypercorn'", "backupfs.cli.mount", "backupfs.cli.serve"):
        assert heavy not in out


@pytest.mark.parametrize("name", ["backup", "restore", "mount"])
def test_every_option_and_argument_has_help(name: str) -> None:
    parser = build_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sub.choices[name]
    missing = [a.option_strings or a.dest for a in command._actions if not a.help]
    assert missing == []
