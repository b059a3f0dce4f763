"""The sftp package's seams: paramiko only where its SSH transport is set up, no private APIs."""

from __future__ import annotations

import ast
from pathlib import Path

import backupfs

SOURCES = Path(backupfs.__file__).parent
SFTP = SOURCES / "backends" / "sftp"


def _private_uses(path: Path) -> list[str]:
    """`x._name` where x is not self or cls: reaching into another object's private API."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_paramiko_only_in_its_transport_and_never_its_private_api() -> None:
    """The SFTP client is our own (protocol.py): paramiko is one of two SSH transports."""
    users = sorted(p.name for p in SOURCES.rglob("*.py") if "paramiko" in _imports(p))
    assert users == ["connect.py"]
    assert [use for p in sorted(SFTP.glob("*.py")) for use in _private_uses(p)] == []


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import paramiko\nfrom paramiko import sftp\nclient._read_response()\nself._own()\n")
    assert _imports(sample) == {"paramiko"}
    assert [use.rsplit(": ", 1)[1] for use in _private_uses(sample)] == ["._read_response"]
