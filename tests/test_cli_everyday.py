"""What a restic user expects of the command line itself: `version`, `help COMMAND`, "did you mean",
durations such as `5m`, and help text on every option of the everyday commands (`--json`: test_cli_json)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backupfs import __version__
from backupfs.cli._args import parse_duration, parse_time
from backupfs.cli.main import COMMANDS, build_parser


def backupfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupfs", *args], capture_output=True, text=True, check=False, timeout=60
    )


def test_version_text_and_json() -> None:
    assert backupfs("version").stdout.startswith(f"backupfs {__version__} running on Python 3.")
    doc = json.loads(backupfs("version", "--json").stdout)
    assert doc["message_type"] == "version" and doc["version"] == __version__ and doc["os"] == sys.platform


def test_help_command_is_the_command_help() -> None:
    assert backupfs("help", "diff").stdout == backupfs("diff", "--help").stdout
    assert "COMMAND" in backupfs("help").stdout
    proc = backupfs("help", "snapshot")
    assert proc.returncode == 2 and proc.stderr == "backupfs: unknown command 'snapshot'; did you mean snapshots?\n"


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["snapshot"], "invalid choice: 'snapshot'; did you mean 'snapshots'?"),
        (["-r", "/x", "snapshots", "--hots", "h"], "--hots: did you mean --host?"),
        (["-r", "/x", "backup", "--exlude=*.o", "/tmp"], "--exlude=*.o: did you mean --exclude"),
        (["key", "lsit"], "invalid choice: 'lsit'; did you mean 'list'?"),
        (["-r", "/x", "stats", "--mode", "raw"], "did you mean 'raw-data'?"),
    ],
)
def test_did_you_mean(argv: list[str], hint: str) -> None:
    proc = backupfs(*argv)
    assert proc.returncode == 2 and hint in proc.stderr.splitlines()[-1], proc.stderr
    assert "Traceback" not in proc.stderr


def test_durations_everywhere_one_parser() -> None:
    assert [parse_duration(t) for t in ("90", "30s", "5m", "2h", "1h30m", "1.5h", "7d", "250ms")] == [
        90,
        30,
        300,
        7200,
        5400,
        5400,
        7 * 86400,
        0.25,
    ]
    assert parse_duration("30", default_unit="d") == 30 * 86400
    for bad in ("", "5x", "m5", "5m 3", "-5m", "1h-2m"):
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(bad)
    args = build_parser("snapshots").parse_args(["--retry-lock", "5m", "snapshots"])
    assert args.retry_lock == 300
    proc = backupfs("-r", "/x", "snapshots", "--retry-lock", "soon")
    assert proc.returncode == 2 and "invalid duration 'soon'" in proc.stderr


def test_times_as_restic_find_takes_them() -> None:
    utc = parse_time("2024-05-01T12:00:00+00:00")
    assert utc == 1_714_564_800 * 10**9
    assert parse_time("2024-05-01 14:00:00 +0200") == utc
    assert parse_time("01.05.2024 12:00:00 +0000") == utc
    assert parse_time("1960-01-01T00:00:00.5+00:00") == -315_619_200 * 10**9 + 500_000_000  # exact, pre-epoch
    with pytest.raises(ValueError, match="invalid time"):
        parse_time("next tuesday")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_and_argument_has_help(name: str) -> None:
    parser = build_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parsers = [(name, sub.choices[name])]
    for label, p in parsers:  # and the actions of `key`, ...
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                parsers.extend((f"{label} {n}", c) for n, c in a.choices.items())
    missing = [
        f"{label}: {a.dest}"
        for label, p in parsers
        for a in p._actions
        if not a.help and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
    ]
    assert missing == []


GLOBAL = ("--repo", "--password-file", "--json", "--quiet", "--retry-lock", "--cache-dir")


@pytest.mark.parametrize("name", [*sorted(COMMANDS), "key list", "key export"])
def test_help_lists_own_options_first_and_global_ones_once(name: str) -> None:
    text = backupfs(*name.split(), "--help").stdout
    usage, _, rest = text.partition("\n\n")
    own, heading, global_part = rest.partition("\nglobal options:\n")
    assert heading, text
    assert not any(g in usage for g in GLOBAL), usage  # the usage line is the command's own
    for option in GLOBAL:
        listed = re.findall(rf"^  (?:-\w(?: \S+)?, )?{option}(?![-\w])", text, re.MULTILINE)  # as an option line
        assert len(listed) == 1 and listed[0] in global_part, (option, text)
    assert "-h, --help" in own


def test_every_environment_variable_is_documented() -> None:
    root = Path(__file__).parent.parent
    used = set()
    for path in (root / "backupfs").rglob("*.py"):
        used |= set(re.findall(r"BACKUPFS_[A-Z_]+[A-Z]", path.read_text()))
    used -= {"BACKUPFS_TEST_CRASH_AT"}  # tests only (cli/prune.py says so)
    assert {"BACKUPFS_PASSWORD_COMMAND", "BACKUPFS_DEBUG", "BACKUPFS_NEW_PASSWORD"} <= used
    helptext = backupfs("--help").stdout
    readme = (root / "README.md").read_text()
    for text in (helptext, readme):
        assert sorted(v for v in used if not re.search(rf"\b{v}\b", text)) == []
