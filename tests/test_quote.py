"""How the CLI shows stored names: escaped on a terminal, exact in JSON (format.md 9)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from fastrepo import init_fast
from support.cli import CLI

from backupfs.cli._quote import escape, json_name


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"plain name.txt", "plain name.txt"),
        (b"new\nline", "new\\nline"),
        (b"\x1b[31mred\x07", "\\x1b[31mred\\x07"),
        (b"back\\slash", "back\\\\slash"),
        (b"\xff\xfe", "\\xff\\xfe"),
        ("caf\u00e9 \u202egnp.exe".encode(), "caf\u00e9 \\u202egnp.exe"),
        ("\u00a0nbsp\u2028".encode(), "\\u00a0nbsp\\u2028"),
        (b"tab\there\r", "tab\\there\\r"),
    ],
)
def test_escape_shows_every_name_on_one_line_unambiguously(raw: bytes, shown: str) -> None:
    assert escape(raw) == shown
    assert escape(os.fsdecode(raw)) == shown  # the same for a path already decoded for a message
    assert shown.isprintable()


def test_json_name_is_exact_and_valid_unicode() -> None:
    assert json_name("name", b"ok\n") == {"name": "ok\n"}
    odd = json_name("path", b"/x/\xff")
    assert odd == {"path": "/x/\ufffd", "path_bytes": base64.b64encode(b"/x/\xff").decode()}


@pytest.fixture
def fast_cli(tmp_path: Path, cli_env: dict[str, str]) -> CLI:
    init_fast(tmp_path / "repo")
    return CLI(tmp_path / "repo", cli_env)


def test_ls_prints_real_file_names_escaped_and_json_exact(fast_cli: CLI, tmp_path: Path) -> None:
    """Names a real file system allows: a newline forging a line, a terminal escape, bytes that
    are not UTF-8. Each stays one escaped line on a terminal, and exact in --json."""
    src = tmp_path / "src"
    src.mkdir()
    names = [b"two\nlines", b"\x1b]0;pwned\x07title", b"latin1-caf\xe9"]
    for name in names:
        (src / os.fsdecode(name)).write_bytes(b"x")
    fast_cli("backup", src)
    listed = fast_cli("ls", "--no-recursive", "latest", src).stdout.decode().splitlines()
    base = str(src)
    assert listed == [f"{base}/\\x1b]0;pwned\\x07title", f"{base}/latin1-caf\\xe9", f"{base}/two\\nlines"]
    nodes = [json.loads(line) for line in fast_cli("ls", "--json", "--no-recursive", "latest", src).stdout.splitlines()]
    exact = {base64.b64decode(n["name_bytes"]) if "name_bytes" in n else n["name"].encode() for n in nodes[1:]}
    assert exact == set(names)
