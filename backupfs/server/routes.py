"""What a request names: strict parsing of request paths and Range headers."""

from __future__ import annotations

import dataclasses
import re
from typing import Final

from backupfs.backends import layout
from backupfs.backends.base import FileType

# names a repository's own folders use: never a segment of a repository's path
RESERVED: Final = frozenset({*layout.FOLDERS, layout.CONFIG_NAME})
_RAW_PATH = re.compile(rb"/[A-Za-z0-9._/-]*")
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
MAX_REPO_DEPTH: Final = 8
MAX_PATH: Final = 1024  # bytes of a request path


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What a request path names: a repository, its config, a type folder, or one file."""

    repo: tuple[str, ...]
    kind: str  # "repo", "config", "list", "file"
    ftype: FileType | None = None
    name: str = ""


def parse_target(raw_path: bytes) -> Target | None:
    """Strict on purpose: anything that is not plainly one of the API's forms is refused."""
    if not _RAW_PATH.fullmatch(raw_path) or len(raw_path) > MAX_PATH:
        return None
    parts = raw_path.decode("ascii")[1:].split("/")
    last = parts.pop()
    target: Target | None
    if last == "":
        if parts and parts[-1] in layout.FOLDERS:
            ftype = layout.FOLDERS[parts.pop()]
            target = Target(tuple(parts), "list", ftype)
        else:
            target = Target(tuple(parts), "repo")
    elif last == layout.CONFIG_NAME:
        target = Target(tuple(parts), "config", FileType.CONFIG, layout.CONFIG_NAME)
    elif parts and parts[-1] in layout.FOLDERS and layout.is_valid_name(layout.FOLDERS[parts[-1]], last):
        ftype = layout.FOLDERS[parts.pop()]
        target = Target(tuple(parts), "file", ftype, last)
    else:
        return None
    if len(target.repo) > MAX_REPO_DEPTH:
        return None
    for seg in target.repo:
        if seg in RESERVED or not _SEGMENT.fullmatch(seg):
            return None
    return target


def parse_range(value: bytes, size: int) -> tuple[int, int] | str | None:
    """One `bytes=` range -> (start, end exclusive); None if unsatisfiable; "bad" if malformed."""
    m = re.fullmatch(rb"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if m is None or (not m[1] and not m[2]):
        return "bad"
    if not m[1]:
        suffix = int(m[2])
        return (max(0, size - suffix), size) if suffix else None
    start = int(m[1])
    end = min(size, int(m[2]) + 1) if m[2] else size
    if m[2] and int(m[2]) < start:
        return "bad"
    return (start, end) if start < size else None

