"""What shell completion and man pages need to know of the command line, read from the argparse
parser itself (so they can never disagree with `--help`)."""

from __future__ import annotations

import argparse
import dataclasses

# Arguments that name snapshots: completion offers `latest` and the repository's short ids.
SNAPSHOT_DESTS = frozenset({"snapshot", "snapshots", "snapshot1", "snapshot2", "parent"})
# Environment variables the program reads, for the man page (README and docs say the same).
ENVIRONMENT = (
    ("BACKUPFS_REPOSITORY", "repository location (as -r)"),
    ("BACKUPFS_REPOSITORY_FILE", "file holding the repository location (as --repository-file)"),
    ("BACKUPFS_PASSWORD", "the password"),
    ("BACKUPFS_PASSWORD_FILE", "file holding the password (as -p)"),
    ("BACKUPFS_PASSWORD_COMMAND", "command printing the password (as --password-command)"),
    ("BACKUPFS_NEW_PASSWORD", "the new password for key add, key passwd and key import"),
    ("BACKUPFS_KEY_HINT", "key file to try first (as --key-hint)"),
    ("BACKUPFS_CACHE_DIR", "local cache folder (as --cache-dir; default $XDG_CACHE_HOME/backupfs)"),
    ("BACKUPFS_FROM_REPOSITORY", "copy: the source repository (as --from-repo)"),
    ("BACKUPFS_FROM_PASSWORD, BACKUPFS_FROM_PASSWORD_FILE, BACKUPFS_FROM_PASSWORD_COMMAND", "copy: its password"),
    ("BACKUPFS_REST_USERNAME, BACKUPFS_REST_PASSWORD", "credentials for rest: repositories"),
    ("BACKUPFS_REST_CACERT", "CA certificate for an https rest: server"),
    ("BACKUPFS_PROGRESS_FPS", "progress updates a second (default 10 on a terminal, 1 with --json; at most 60)"),
    ("BACKUPFS_DEBUG", "set to 1 to print a traceback for an internal error"),
    ("XDG_CACHE_HOME", "where the cache folder is when none is given (default ~/.cache)"),
    (
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_DEFAULT_REGION, AWS_CA_BUNDLE",
        "credentials and settings for s3: repositories (docs/backends.md)",
    ),
)
EXIT_STATUS = (
    (0, "success"),
    (1, "fatal error"),
    (2, "usage error, or a command an append-only server refuses"),
    (3, "backup saved, but some files could not be read"),
    (4, "data integrity problem"),
    (10, "repository does not exist"),
    (11, "repository is locked"),
    (12, "wrong password"),
    (13, "the repository lock was lost"),
    (130, "interrupted (Ctrl-C)"),
    (143, "ended by SIGTERM (129: SIGHUP); the lock is removed, no snapshot saved"),
)


@dataclasses.dataclass
class Option:
    flags: list[str]
    help: str
    metavar: str | None  # None: a switch, takes no value
    kind: str  # what a value is: "snapshot", "file", "dir", "choice", "text"
    choices: list[str]


@dataclasses.dataclass
class Positional:
    name: str
    help: str
    kind: str  # "snapshot", "choice", "path" (file names), "text"
    choices: list[str]
    repeats: bool  # takes the rest of the words


@dataclasses.dataclass
class Command:
    name: str
    help: str
    description: str
    usage: str
    options: list[Option]
    positionals: list[Positional]
    subcommands: list[Command]


def model(parser: argparse.ArgumentParser) -> Command:
    """The program (its options are the global ones) with every command below it."""
    root = _command(parser, "backupfs", parser.description or "", set())
    global_flags = {f for o in root.options for f in o.flags}
    root.subcommands = list(_sub(parser, global_flags).values())
    names = [c.name for c in root.subcommands]
    for cmd in root.subcommands:  # `help COMMAND` completes to the commands
        for p in cmd.positionals:
            if cmd.name == "help" and p.name == "COMMAND":
                p.kind, p.choices = "choice", names
    return root


def _sub(parser: argparse.ArgumentParser, global_flags: set[str]) -> dict[str, Command]:
    out: dict[str, Command] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                cmd = _command(sub, name, helps.get(name, ""), global_flags)
                cmd.subcommands = list(_sub(sub, global_flags).values())
                out[name] = cmd
    return out


def _command(parser: argparse.ArgumentParser, name: str, help: str, skip: set[str]) -> Command:
    options, positionals = [], []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction) or a.help == argparse.SUPPRESS:
            continue
        if a.option_strings:
            if set(a.option_strings) & skip:
                continue
            switch = a.nargs == 0
            metavar = None if switch else str(a.metavar or a.dest.upper())
            options.append(Option(list(a.option_strings), a.help or "", metavar, _kind(a), _choices(a)))
        else:
            kind = "snapshot" if a.dest in SNAPSHOT_DESTS else ("choice" if a.choices else "path")
            if a.dest in ("patterns", "topic", "id"):
                kind = "choice" if a.choices else "text"
            positionals.append(
                Positional(str(a.metavar or a.dest), a.help or "", kind, _choices(a), a.nargs in ("*", "+"))
            )
    usage = parser.format_usage().strip().removeprefix("usage: ")
    return Command(name, help, parser.description or help, usage, options, positionals, [])


def _kind(a: argparse.Action) -> str:
    if a.choices:
        return "choice"
    if a.dest in SNAPSHOT_DESTS:
        return "snapshot"
    words = f"{a.metavar or ''} {a.dest}".upper()
    if "DIR" in words:
        return "dir"
    if "FILE" in words or "PATH" in words or "CERT" in words:
        return "file"
    return "text"


def _choices(a: argparse.Action) -> list[str]:
    return [str(c) for c in a.choices] if a.choices and not isinstance(a.choices, dict) else []
