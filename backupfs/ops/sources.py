"""What a backup saves when the paths come from a list: restic's `--files-from` (patterns, one a
line, expanded as globs), `--files-from-verbatim` (paths, one a line) and `--files-from-raw`
(paths, each ended by a NUL byte).

A line without glob characters stays a path even when nothing is there, so that the backup
reports it as missing (exit code 3) as it does a missing path on the command line; a glob that
matches nothing is only warned about, as restic does.
"""

from __future__ import annotations

import enum
import glob
import os

from backupfs.errors import UsageError


class ListKind(enum.Enum):
    PATTERNS = "files-from"
    VERBATIM = "files-from-verbatim"
    RAW = "files-from-raw"


def parse_files_from(data: bytes, kind: ListKind, source: str) -> tuple[list[str], list[str]]:
    """(paths, warnings) from the contents of a list file named `source` (for messages)."""
    if kind is ListKind.RAW:
        return [os.fsdecode(item) for item in data.split(b"\0") if item], []
    try:
        text = _decode_text(data)
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"--{kind.value} {source}: not UTF-8 text (use --files-from-raw for names that are not UTF-8)"
        ) from exc
    lines = text.split("\n")
    if kind is ListKind.VERBATIM:
        return [line.removesuffix("\r") for line in lines if line.removesuffix("\r")], []
    paths: list[str] = []
    warnings: list[str] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not glob.has_magic(line):
            paths.append(line)
            continue
        found = sorted(glob.glob(line, include_hidden=True))
        if not found:
            warnings.append(f"{source}: pattern {line!r} matches no file, skipped")
        paths.extend(found)
    return paths, warnings


def _decode_text(data: bytes) -> str:
    """UTF-8, or UTF-16 with a byte-order mark (what Windows editors write), as restic reads."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    return data.decode("utf-8").removeprefix("\ufeff")
