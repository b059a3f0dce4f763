"""Exclude and include patterns with restic's semantics (docs/usage.md, "Patterns").

A pattern without a `/` matches any single path component (`*.tmp`, `node_modules`); a pattern with
a `/` is anchored at the root when it starts with `/`, otherwise it may start at any component.
`*` and `?` never cross `/`; `**` crosses any number of components; `\\` makes the next character
literal. A match on a directory matches everything below it.

A pattern starting with `!` is negated: patterns are read in order and the last one that matches
a path decides, so `!` takes back what an earlier pattern matched (as in restic and gitignore).
A walk does not enter an excluded folder, so `!` cannot bring back something inside one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Iterable

from backupfs.errors import UsageError

CACHEDIR_TAG = b"CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
MAX_TAG_HEADER = 4096  # bytes of a tag file compared with --exclude-if-present's CONTENT, at most


def _translate(pattern: str) -> str:
    """A pattern's regular expression (not anchored)."""
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
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 1
        elif c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            start = i + 1
            negate = pattern.startswith(("!", "^"), start)
            start += negate
            j = pattern.find("]", start + 1)  # a `]` first in the class is a member, as in Go
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[start:j].replace("\\", "\\\\").replace("[", "\\[")
                out.append(f"[{'^' if negate else ''}{body}]")
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


@dataclasses.dataclass(frozen=True, slots=True)
class _Pattern:
    negated: bool
    anchored: bool
    regex: re.Pattern[str]  # the whole path, or a suffix of it, then anything below
    parts: tuple[re.Pattern[str] | None, ...]  # anchored: one per component, None for `**`


def _compile(text: str, ignore_case: bool) -> _Pattern:
    try:
        return _compile_checked(text, ignore_case)
    except re.error as exc:
        raise UsageError(f"invalid pattern {text!r}: {exc}") from exc


def _compile_checked(text: str, ignore_case: bool) -> _Pattern:
    negated = text.startswith("!")
    if negated:
        text = text[1:]
    text = os.path.expanduser(text).rstrip("/") or "/"
    anchored = text.startswith("/")
    body = text.lstrip("/")
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    regex = re.compile(f"{pattern_regex(text)}(?:/.*)?$", flags) if body else re.compile(".*", flags)
    parts = tuple(
        None if "**" in part else re.compile(_translate(part), flags) for part in (body.split("/") if body else [])
    )
    return _Pattern(negated, anchored, regex, parts)


class _List:
    """One ordered list of patterns: the last that matches decides."""

    def __init__(self, patterns: list[str], ignore_case: bool) -> None:
        self.compiled = [_compile(p, ignore_case) for p in patterns]
        self._any: re.Pattern[str] | None = None
        if self.compiled and not any(p.negated for p in self.compiled):
            # the usual case: one expression for all of them
            flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
            self._any = re.compile("|".join(f"(?:{p.regex.pattern})" for p in self.compiled), flags)

    def matches(self, path: str) -> bool:
        if self._any is not None:
            return self._any.match(path) is not None
        for p in reversed(self.compiled):
            if p.regex.match(path) is not None:
                return not p.negated
        return False

    def may_match_below(self, folder: str) -> bool:
        """Whether a path inside `folder` could match: restic's ChildMatch. Only anchored
        patterns can say no, by a component of `folder` that they cannot match."""
        names = [n for n in folder.split("/") if n]
        for p in self.compiled:
            if p.negated:
                continue
            if not p.anchored:
                return True
            for i, name in enumerate(names):
                if i >= len(p.parts):
                    return True  # the folder itself matches
                part = p.parts[i]
                if part is None:
                    return True  # `**`: anything may follow
                if part.fullmatch(name) is None:
                    break
            else:
                return True
        return False


def clean(patterns: Iterable[str]) -> list[str]:
    """Patterns as restic reads them: whitespace trimmed, empty lines and `#` comments dropped."""
    return [p for p in (p.strip() for p in patterns) if p and not p.startswith("#")]


class Excluder:
    """`patterns` and `ipatterns` (matched ignoring case) are two lists, each read in order; a
    path matches if either list says so. `patterns` keeps the case-sensitive list as given."""

    def __init__(self, patterns: Iterable[str], ipatterns: Iterable[str] = ()) -> None:
        self.patterns = clean(patterns)
        self.ipatterns = clean(ipatterns)
        self._lists = [lst for lst in (_List(self.patterns, False), _List(self.ipatterns, True)) if lst.compiled]

    def __bool__(self) -> bool:
        return bool(self._lists)

    def excluded(self, path: bytes) -> bool:
        """`path` is absolute; names that are not UTF-8 are matched through surrogateescape."""
        if not self._lists:
            return False
        text = os.fsdecode(path)
        return any(lst.matches(text) for lst in self._lists)

    def may_match_below(self, folder: bytes) -> bool:
        """Whether anything inside `folder` (an absolute path) could match: an include walks
        only the folders on the way to what it names."""
        text = os.fsdecode(folder)
        return any(lst.may_match_below(text) for lst in self._lists)


_ENV = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand_env(line: str) -> str:
    """`$VAR` and `${VAR}` from the environment (empty when unset), `$$` for a `$`: restic does
    this to the lines of exclude files, so `$HOME/*` works there."""

    def sub(m: re.Match[str]) -> str:
        return "$" if m.group(1) else os.environ.get(m.group(2) or m.group(3), "")

    return _ENV.sub(sub, line)


def read_exclude_file(path: str) -> list[str]:
    """An exclude file's patterns: one a line, `#` comments, variables expanded."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return [expand_env(line) for line in clean(f)]
    except OSError as exc:
        raise UsageError(f"cannot read pattern file {path}: {exc.strerror}") from exc


@dataclasses.dataclass(frozen=True, slots=True)
class TagFile:
    """--exclude-if-present NAME[:CONTENT]: a folder holding NAME (starting with CONTENT, if
    given) keeps only NAME."""

    name: bytes
    header: bytes = b""

    @classmethod
    def parse(cls, spec: str) -> TagFile:
        name, _, header = spec.partition(":")
        if not name or "/" in name or name in (".", ".."):
            raise UsageError(f"invalid --exclude-if-present {spec!r}: expected a file name, then :CONTENT optionally")
        raw = os.fsencode(header)
        if len(raw) > MAX_TAG_HEADER:
            raise UsageError(f"--exclude-if-present CONTENT is longer than {MAX_TAG_HEADER} bytes")
        return cls(os.fsencode(name), raw)

    def present(self, dir_fd: int) -> bool:
        """Looked up in the open folder `dir_fd` (its path may be past PATH_MAX); a tag that is
        not a regular file (a fifo or a device) does not count."""
        try:
            fd = os.open(self.name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:
            return False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            if not self.header:
                return True
            return os.pread(fd, len(self.header), 0) == self.header
        except OSError:
            return False
        finally:
            os.close(fd)


CACHEDIR = TagFile(CACHEDIR_TAG, CACHEDIR_SIGNATURE)


def is_cache_dir(dir_fd: int) -> bool:
    """CACHEDIR.TAG as specified at bford.info/cachedir: a file starting with the signature."""
    return CACHEDIR.present(dir_fd)
