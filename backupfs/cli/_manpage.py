"""Man pages (roff, man(7) macros) generated from the parser's model: backupfs(1) and one
backupfs-COMMAND(1) per command, with the same texts as `--help`."""

from __future__ import annotations

import time

from backupfs import __version__
from backupfs.cli._shellmodel import ENVIRONMENT, EXIT_STATUS, Command, Option


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting with a control dot."""
    out = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _header(name: str, summary: str) -> list[str]:
    date = time.strftime("%Y-%m-%d", time.gmtime())
    return [
        f'.TH "{name.upper()}" "1" "{date}" "backupfs {__version__}" "backupfs manual"',
        ".ad l",  # ragged right, no hyphenation: option names and ids must stay whole
        ".nh",
        ".SH NAME",
        f"{_roff(name)} \\- {_roff(summary)}",
    ]


def _options(options: list[Option]) -> list[str]:
    out = []
    for o in options:
        flags = ", ".join(f"\\fB{_roff(f)}\\fR" for f in o.flags)
        if o.metavar:
            flags += f" \\fI{_roff(o.metavar)}\\fR"
        text = o.help + (f" (one of: {', '.join(o.choices)})" if o.choices else "")
        out += [".TP", flags, _roff(text)]
    return out


def _paragraphs(text: str) -> list[str]:
    """A description: blank lines separate paragraphs; indented lines stay as they are."""
    out: list[str] = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if any(line.startswith(" ") for line in lines):
            out += [".PP", ".nf", _roff(block), ".fi"]
        else:
            out += [".PP", _roff(" ".join(line.strip() for line in lines))]
    return out


def command_page(root: Command, cmd: Command) -> str:
    name = f"backupfs-{cmd.name}"
    lines = _header(name, cmd.help)
    lines += [".SH SYNOPSIS", ".nf", _roff(cmd.usage), ".fi", ".SH DESCRIPTION", *_paragraphs(cmd.description)]
    if cmd.positionals:
        lines.append(".SH ARGUMENTS")
        for p in cmd.positionals:
            lines += [".TP", f"\\fI{_roff(p.name)}\\fR", _roff(p.help)]
    if cmd.options:
        lines += [".SH OPTIONS", *_options(cmd.options)]
    for sub in cmd.subcommands:
        lines += [".SH " + _roff(f"{cmd.name.upper()} {sub.name.upper()}"), _roff(sub.help), ".PP", ".nf"]
        lines += [_roff(sub.usage), ".fi"]
        if sub.description and sub.description != sub.help:
            lines += _paragraphs(sub.description)
        for p in sub.positionals:
            lines += [".TP", f"\\fI{_roff(p.name)}\\fR", _roff(p.help)]
        lines += _options(sub.options)
    lines += [".SH GLOBAL OPTIONS", "The options of", ".BR backupfs (1)", "apply here too."]
    lines += [".SH SEE ALSO", ".BR backupfs (1)", ""]
    return "\n".join(lines)


def main_page(root: Command) -> str:
    lines = _header("backupfs", "deduplicating, encrypted, versioned backups you can mount")
    lines += [".SH SYNOPSIS", ".B backupfs", "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]"]
    lines += [".SH DESCRIPTION", *_paragraphs(root.description)]
    lines += [
        ".PP",
        "Global options may come before or after the command. Snapshots are named by full id, a",
        "unique id prefix, or \\fBlatest\\fR. \\fBbackupfs help\\fR \\fICOMMAND\\fR shows a command's options.",
    ]
    lines.append(".SH COMMANDS")
    for c in root.subcommands:
        lines += [".TP", f"\\fB{_roff(c.name)}\\fR", _roff(c.help) + f" (see \\fBbackupfs\\-{_roff(c.name)}\\fR(1))"]
    lines += [".SH GLOBAL OPTIONS", *_options(root.options)]
    lines.append(".SH ENVIRONMENT")
    for var, meaning in ENVIRONMENT:
        lines += [".TP", f"\\fB{_roff(var)}\\fR", _roff(meaning)]
    lines.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
    lines += [".SH SEE ALSO", ",\n".join(f"\\fBbackupfs\\-{_roff(c.name)}\\fR(1)" for c in root.subcommands), ""]
    return "\n".join(lines)


def pages(root: Command) -> dict[str, str]:
    """File name -> page: backupfs.1 and backupfs-COMMAND.1 for each command."""
    out = {"backupfs.1": main_page(root)}
    for cmd in root.subcommands:
        out[f"backupfs-{cmd.name}.1"] = command_page(root, cmd)
    return out
