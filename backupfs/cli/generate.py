"""`backupfs generate`: shell completion scripts and man pages, from the parser itself."""

from __future__ import annotations

import argparse
import os
import sys

from backupfs.cli import _completion, _manpage
from backupfs.cli._output import err, print_json
from backupfs.cli._shellmodel import model
from backupfs.cli.main import build_parser
from backupfs.errors import UsageError

DESCRIPTION = """\
Writes completion scripts for bash, zsh and fish, and man pages, all generated from the same
parser as --help. FILE '-' is standard output. Snapshot arguments complete to 'latest' and the
short ids of the repository named on the line (or in BACKUPFS_REPOSITORY), looked up only when
such an argument is completed, and only if the password needs no prompt. Where to put them:
  bash  /usr/share/bash-completion/completions/backupfs (or ~/.local/share/bash-completion/completions)
  zsh   a folder in $fpath, as _backupfs (e.g. /usr/local/share/zsh/site-functions/_backupfs)
  fish  ~/.config/fish/completions/backupfs.fish (or /usr/share/fish/vendor_completions.d)
  man   /usr/local/share/man/man1
tools/install-deps.sh puts them in place.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "generate",
        help="write shell completion scripts and man pages",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bash-completion", metavar="FILE", help="write the bash completion script to FILE")
    p.add_argument("--zsh-completion", metavar="FILE", help="write the zsh completion script to FILE")
    p.add_argument("--fish-completion", metavar="FILE", help="write the fish completion script to FILE")
    p.add_argument("--man", metavar="DIR", help="write the man pages (backupfs.1, backupfs-COMMAND.1) into DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    wanted = {
        "bash": args.bash_completion,
        "zsh": args.zsh_completion,
        "fish": args.fish_completion,
    }
    if not any(wanted.values()) and not args.man:
        raise UsageError("nothing to generate: give --bash-completion, --zsh-completion, --fish-completion or --man")
    if sum(1 for v in wanted.values() if v == "-") > 1:
        raise UsageError("only one script can go to standard output")
    root = model(build_parser(None))
    written: list[str] = []
    for shell, target in wanted.items():
        if target:
            text = {"bash": _completion.bash, "zsh": _completion.zsh, "fish": _completion.fish}[shell](root)
            _write(target, text)
            written.append(target)
    if args.man:
        os.makedirs(args.man, exist_ok=True)
        for name, page in _manpage.pages(root).items():
            path = os.path.join(args.man, name)
            _write(path, page)
            written.append(path)
    if args.json:
        print_json({"message_type": "generate", "written": [w for w in written if w != "-"]})
    elif not args.quiet:
        for w in written:
            if w != "-":
                err(f"wrote {w}")
    return 0


def _write(target: str, text: str) -> None:
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = f"{target}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
