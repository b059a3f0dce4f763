"""`backupfs [global options] COMMAND ...`: parse, dispatch, and turn errors into exit codes."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn

from backupfs import __version__
from backupfs.cli._args import duration
from backupfs.cli._output import err, print_error_json
from backupfs.cli._shellmodel import ENVIRONMENT, EXIT_STATUS
from backupfs.errors import BackupfsError, Terminated, UsageError
from backupfs.malloc_arenas import cap_malloc_arenas

# name -> (module, one-line help). Only the module of the command being run is imported: the
# commands pull in very different libraries (trio and pyfuse3 for mount, hypercorn for serve),
# and start-up time is paid by every backup a cron job runs and by every mount.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("backupfs.cli.init", "create a new repository"),
    "backup": ("backupfs.cli.backup", "create a new snapshot of files and directories"),
    "snapshots": ("backupfs.cli.snapshots", "list snapshots"),
    "ls": ("backupfs.cli.ls", "list files in a snapshot"),
    "cat": ("backupfs.cli.cat", "print one file of a snapshot to standard output"),
    "dump": ("backupfs.cli.dump", "write a file, or a folder as a tar or zip archive, from a snapshot"),
    "diff": ("backupfs.cli.diff", "show differences between two snapshots"),
    "find": ("backupfs.cli.find", "find files and folders (or blob and tree ids) in snapshots"),
    "stats": ("backupfs.cli.stats", "show sizes, deduplication and compression of snapshots"),
    "restore": ("backupfs.cli.restore", "restore a snapshot into a directory"),
    "mount": ("backupfs.cli.mount", "mount the repository as a read-only filesystem"),
    "check": ("backupfs.cli.check", "check the repository for errors"),
    "tag": ("backupfs.cli.tag", "add, remove or set the tags of snapshots"),
    "verify": ("backupfs.cli.verify", "restore a sample of files and check them (a restore drill)"),
    "forget": ("backupfs.cli.forget", "remove snapshots, by id or by a retention policy"),
    "prune": ("backupfs.cli.prune", "remove data that no snapshot uses"),
    "copy": ("backupfs.cli.copy", "copy snapshots from another repository into this one"),
    "key": ("backupfs.cli.key", "manage passwords (key files)"),
    "unlock": ("backupfs.cli.unlock", "remove stale locks"),
    "cache": ("backupfs.cli.cache", "list or clean up the local caches of repositories"),
    "repair": ("backupfs.cli.repair", "repair a damaged repository (index, snapshots, packs)"),
    "serve": ("backupfs.cli.serve", "serve repositories over HTTP (for rest: clients)"),
    "generate": ("backupfs.cli.generate", "write shell completion scripts and man pages"),
    "version": ("backupfs.cli.version", "print version information"),
    "help": ("backupfs.cli.help", "show the help of a command"),
}


GLOBAL_OPTIONS = "global options"
GLOBAL_HINT = "These go before or after the command. Environment variables: `backupfs --help`."


def _add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Global options go before or after the command, as with restic; in help they come after
    the command's own, under their own heading, and stay out of its usage line."""

    def d(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group(GLOBAL_OPTIONS, GLOBAL_HINT if suppress else None)
    add = group.add_argument
    add("-r", "--repo", default=d(None), help="repository location (env BACKUPFS_REPOSITORY)")
    add(
        "--repository-file",
        default=d(None),
        metavar="FILE",
        help="file holding the repository location (env BACKUPFS_REPOSITORY_FILE)",
    )
    add(
        "-p",
        "--password-file",
        default=d(None),
        metavar="FILE",
        help="file holding the password (env BACKUPFS_PASSWORD_FILE)",
    )
    add(
        "--password-command",
        default=d(None),
        metavar="COMMAND",
        help="command printing the password (env BACKUPFS_PASSWORD_COMMAND)",
    )
    add("--key-hint", default=d(None), metavar="ID", help="try this key file first (env BACKUPFS_KEY_HINT)")
    add("--json", action="store_true", default=d(False), help="JSON on standard output, errors too (docs/usage.md)")
    add("-q", "--quiet", action="store_true", default=d(False), help="no progress and no summary, only errors")
    add("--no-lock", action="store_true", default=d(False), help="do not lock the repository (read-only commands)")
    add(
        "--retry-lock",
        type=duration,
        default=d(0),
        metavar="DURATION",
        help="wait this long for a lock (30s, 5m, 1h; a bare number is seconds)",
    )
    add(
        "-o",
        "--option",
        action="append",
        default=d(None),
        metavar="KEY=VALUE",
        help="backend option, e.g. sftp_port=2222 (repeatable; docs/backends.md)",
    )
    add(
        "--cache-dir",
        default=d(None),
        metavar="DIR",
        help="local cache folder (env BACKUPFS_CACHE_DIR; default ~/.cache/backupfs)",
    )
    add("--no-cache", action="store_true", default=d(False), help="do not use a local cache")
    for action in group._group_actions:
        action.global_option = True  # type: ignore[attr-defined]


class _OwnUsage(argparse.HelpFormatter):
    """A command's usage line shows its own options; the global ones are listed once, below."""

    def add_usage(
        self,
        usage: str | None,
        actions: Iterable[argparse.Action],
        groups: Iterable[argparse._MutuallyExclusiveGroup],
        prefix: str | None = None,
    ) -> None:
        own = [a for a in actions if not getattr(a, "global_option", False)]
        super().add_usage(usage, own, groups, prefix)


def _own_usage(formatter: object) -> type[argparse.HelpFormatter]:
    """`formatter` (a command's own choice, e.g. RawDescriptionHelpFormatter) with _OwnUsage."""
    base = formatter if isinstance(formatter, type) else argparse.HelpFormatter
    return type(f"OwnUsage{base.__name__}", (_OwnUsage, base), {})


def _environment_epilog() -> str:
    """The environment variables and exit codes, at the end of `backupfs --help`."""
    lines = ["environment variables:"]
    for name, meaning in ENVIRONMENT:
        lines += [f"  {name}", f"      {meaning}"]
    lines += ["", "exit codes:"]
    lines += [f"  {code:<4} {meaning}" for code, meaning in EXIT_STATUS]
    return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean ..." for a mistyped command, choice or option (as restic, git).

    A script that asked for `--json` reads stdout: a usage error reaches it there too, as the
    error document every other failure prints (`json_errors`, set by `main` from the raw argv,
    since the arguments that failed to parse cannot say whether --json was among them)."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        message = suggest(self, message)
        if Parser.json_errors:
            print_error_json(UsageError.exit_code, message)
        super().error(message)


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)$")
_UNRECOGNIZED = "unrecognized arguments: "


def suggest(parser: argparse.ArgumentParser, message: str) -> str:
    """The argparse error `message`, with the closest known words offered for what was mistyped."""
    m = _INVALID_CHOICE.search(message)
    if m:
        choices = re.findall(r"'([^']*)'", m[2])
        close = close_matches(m[1], choices)
        head = message[: m.start()] + f"invalid choice: {m[1]!r}"
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else f" (choose from {m[2]})"
        return head + hint
    if message.startswith(_UNRECOGNIZED):
        options = sorted({o for p in _parsers(parser) for a in p._actions for o in a.option_strings})
        hints = []
        for word in message[len(_UNRECOGNIZED) :].split():
            if word.startswith("-"):
                close = close_matches(word.partition("=")[0], options)
                if close:
                    hints.append(f"{word}: did you mean {' or '.join(close)}?")
        if hints:
            return message + " (" + "; ".join(hints) + ")"
    return message


def close_matches(word: str, candidates: Sequence[str]) -> list[str]:
    """Candidates `word` begins (`raw` -> `raw-data`), then those difflib finds similar (typos)."""
    found = [c for c in candidates if word and c.startswith(word)]
    found += difflib.get_close_matches(word, candidates, n=3)
    return list(dict.fromkeys(found))[:3]


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and every parser below it, iteratively."""
    stack = [parser]
    while stack:
        p = stack.pop()
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())


class _SilentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def _command_in(argv: Sequence[str]) -> str | None:
    """The command word, found the way the full parser would find it (after global options)."""
    pre = _SilentParser(add_help=False)
    _add_global_options(pre, suppress=False)
    pre.add_argument("command", nargs="?")
    try:
        known, _rest = pre.parse_known_args(argv)
    except ValueError:  # the full parser reports it, once
        return None
    return known.command if known.command in COMMANDS else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser for `command`; the other commands appear only by name and help."""
    parser = Parser(
        prog="backupfs",
        description="Deduplicating, encrypted, versioned backups you can mount.",
        epilog=_environment_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"backupfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, helptext) in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=helptext)
    for subparser in sub.choices.values():
        _add_global_options(subparser, suppress=True)
        subparser.formatter_class = _own_usage(subparser.formatter_class)
        for action in subparser._actions:  # nested commands (`key list --json`) take them too
            if isinstance(action, argparse._SubParsersAction):
                for nested in action.choices.values():
                    _add_global_options(nested, suppress=True)
                    nested.formatter_class = _own_usage(nested.formatter_class)
    return parser


# systemd stops a service with SIGTERM, a closed terminal sends SIGHUP: both end a command as
# Ctrl-C does. `serve` answers them itself inside trio (a handler raising there would tear
# through trio's internals); the mount's trio loop takes them over while it runs.
TERMINATING = (signal.SIGTERM, signal.SIGHUP)
OWN_SIGNALS = {"serve"}

_Handler = Callable[[int, FrameType | None], Any] | int | None


def _terminate(signum: int, _frame: FrameType | None) -> None:
    for sig in TERMINATING:  # once: a second signal must not cut the cleanup the first started
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def _wants_json(argv: Sequence[str]) -> bool:
    """--json among the options (not after `--`, where a command's own arguments begin)."""
    words = list(argv)
    return "--json" in (words[: words.index("--")] if "--" in words else words)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cap_malloc_arenas()
    Parser.json_errors = _wants_json(argv)
    try:
        args = build_parser(_command_in(argv) or "").parse_args(argv)
    finally:
        Parser.json_errors = False
    previous: dict[int, _Handler] = {}
    if args.command not in OWN_SIGNALS:
        previous = {sig: signal.signal(sig, _terminate) for sig in TERMINATING}
    try:
        return _run(args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace) -> int:
    """Runs the command; every error becomes one line on stderr and its exit code, and with
    --json also an error document on stdout (the last line there)."""
    try:
        code: int = args.func(args)
        return code
    except BackupfsError as exc:
        message, code = str(exc), exc.exit_code
    except Terminated as exc:
        message, code = f"terminated by {signal.Signals(exc.signum).name}", 128 + exc.signum
    except KeyboardInterrupt:
        message, code = "interrupted", 130
    except BrokenPipeError:
        # `backupfs ls ... | head`: the reader left; say nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:
        name = exc.filename
        where = f" '{name if isinstance(name, str) else os.fsdecode(name) if isinstance(name, bytes) else name}'"
        message, code = f"{exc.strerror or exc}{where if name else ''}", 1
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("BACKUPFS_DEBUG"):
            traceback.print_exc()
        message = f"internal error: {type(exc).__name__}: {exc} (set BACKUPFS_DEBUG=1 for details)"
        code = 1
    err(f"backupfs: {message}")
    if getattr(args, "json", False):
        print_error_json(code, message)
    return code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
