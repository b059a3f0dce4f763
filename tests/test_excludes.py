"""The pattern language of --exclude, --iexclude and restore's --include (docs/usage.md)."""

from __future__ import annotations

import pytest

from backupfs.errors import UsageError
from backupfs.ops.excludes import Excluder, expand_env
from backupfs.ops.sources import ListKind, parse_files_from


def matches(patterns: list[str], path: str, ipatterns: list[str] | None = None) -> bool:
    return Excluder(patterns, ipatterns or []).excluded(path.encode())


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("foo", "/dir1/foo/dir2/file", True),
        ("foo", "/dir/foobar", False),
        ("/bin", "/bin/bash", True),
        ("/bin", "/usr/bin/restic", False),
        ("b*ash", "/bin/bash", True),
        ("b*ash", "/bin/ash", False),
        ("foo/**/bar", "/dir1/foo/dir2/bar/file", True),
        ("foo/**/bar", "/foo/bar/file", True),
        ("*.[ch]", "/src/x.c", True),
        ("*.[!ch]", "/src/x.c", False),
        ("*.[!ch]", "/src/x.o", True),
        ("\\*", "/a/*", True),
        ("\\*", "/a/b", False),
        ("#x", "/a/#x", False),  # a comment, not a pattern
        ("dir/", "/a/dir/f", True),  # a trailing / is ignored
    ],
)
def test_restic_examples(pattern: str, path: str, expected: bool) -> None:
    assert matches([pattern], path) is expected


def test_the_last_matching_pattern_decides() -> None:
    patterns = ["/home/*", "!/home/me", "/home/me/tmp"]
    assert matches(patterns, "/home/you")
    assert not matches(patterns, "/home/me")
    assert not matches(patterns, "/home/me/docs/cv")
    assert matches(patterns, "/home/me/tmp/x")
    assert not matches(patterns, "/srv")
    # a `!` alone never matches anything on its own
    assert not matches(["!/home"], "/home")
    # a leading \! is a literal !
    assert matches(["\\!important"], "/a/!important")
    assert not matches(["\\!important"], "/a/important")


def test_ignore_case_is_a_list_of_its_own() -> None:
    assert matches([], "/A/B.TMP", ["*.tmp"])
    assert not matches(["*.tmp"], "/A/B.TMP")
    # each list is read on its own: a `!` in one does not take back a match of the other
    assert matches(["*.tmp"], "/a/b.tmp", ["!*.TMP"])


def test_may_match_below_walks_only_the_way_to_anchored_patterns() -> None:
    inc = Excluder(["/home/me/docs", "/srv/*/www"])
    below = {p: inc.may_match_below(p.encode()) for p in ["", "/home", "/home/me", "/home/you", "/usr", "/srv/a"]}
    assert below == {"": True, "/home": True, "/home/me": True, "/home/you": False, "/usr": False, "/srv/a": True}
    assert not inc.may_match_below(b"/srv/a/cgi")
    assert Excluder(["leaf.txt"]).may_match_below(b"/any/where")  # not anchored: anywhere
    assert Excluder(["/a/**/z"]).may_match_below(b"/a/b/c/d")
    assert not Excluder(["/a/**/z"]).may_match_below(b"/b")


def test_bad_patterns_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        Excluder(["[z-a]"])


def test_environment_in_exclude_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOMEWHERE", "/srv/x")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    assert expand_env("$SOMEWHERE/*") == "/srv/x/*"
    assert expand_env("${SOMEWHERE}y") == "/srv/xy"
    assert expand_env("a$$b$UNSET_VAR") == "a$b"


def test_files_from_forms() -> None:
    paths, warnings = parse_files_from(b"# c\n  /a b  \n\n/c\r\n", ListKind.PATTERNS, "list")
    assert (paths, warnings) == (["/a b", "/c"], [])
    paths, _ = parse_files_from(b"# not a comment\n  spaced \n\n", ListKind.VERBATIM, "list")
    assert paths == ["# not a comment", "  spaced "]
    paths, _ = parse_files_from(b"/a\nb\0/c\xff\0\0", ListKind.RAW, "list")
    assert paths == ["/a\nb", "/c\udcff"]
    paths, _ = parse_files_from("/x\n".encode("utf-16"), ListKind.PATTERNS, "list")  # with a BOM
    assert paths == ["/x"]
    with pytest.raises(UsageError):
        parse_files_from(b"/\xff\n", ListKind.PATTERNS, "list")
