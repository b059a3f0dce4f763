"""Exclude patterns with restic's semantics, compiled once to one regular expression.

A pattern without a `/` matches any single path component (`*.tmp`, `node_modules`); a pattern with
a `/` is anchored at the root when it starts with `/`, otherwise it may start at any component.
`*` and `?` never cross `/`; `**` crosses any number of components. A match on a directory
excludes everything below it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


def _translate(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                out[-1] = "(?:.*/)?"
                i += 1
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def pattern_regex(pattern: str) -> str:
    """The regular expression (without the `(?:/.*)?$` that extends a match to what lies below) for
    one pattern: shared by excludes, restore's includes and `find`."""
    p = pattern.rstrip("/") or "/"
    body = _translate(p.lstrip("/"))
    return f"/{body}" if p.startswith("/") else f"(?:^|.*/){body}"


class Excluder:
    def __init__(self, patterns: Iterable[str]) -> None:
        parts = []
        self.patterns = [p for p in (p.strip() for p in patterns) if p and not p.startswith("#")]
        for p in self.patterns:
            parts.append(pattern_regex(os.path.expanduser(p)))
        self._re = re.compile(f"(?:{'|'.join(parts)})(?:/.*)?$", re.DOTALL) if parts else None

    def excluded(self, path: bytes) -> bool:
        """`path` is absolute; names that are not UTF-8 are matched through surrogateescape."""
        if self._re is None:
            return False
        return self._re.match(os.fsdecode(path)) is not None


def read_exclude_file(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [line.rstrip("\n") for line in f]


def is_cache_dir(dir_fd: int) -> bool:
    """CACHEDIR.TAG as specified at bford.info/cachedir: a file starting with the signature
    (looked up in the open folder `dir_fd`: its path may be past PATH_MAX)."""
    try:
        fd = os.open(b"CACHEDIR.TAG", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return os.read(fd, len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    except OSError:
        return False
    finally:
        os.close(fd)
