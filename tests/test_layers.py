"""The layering of design.md 14a holds: the import-linter contracts in pyproject.toml.

They are checked on the source (no module is imported), so an upward import, pyfuse3 outside the
FUSE adapter, argparse outside the CLI or an I/O module in pure code fails the suite, naming the
import and its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

from importlinter.cli import EXIT_STATUS_SUCCESS, lint_imports

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_every_import_points_down() -> None:
    assert lint_imports(config_filename=str(PYPROJECT), no_cache=True) == EXIT_STATUS_SUCCESS


SERVICES = ("ops", "prune", "mount")


def test_services_reach_storage_through_the_repository() -> None:
    """Services list, read, write and delete repository files through `Repository`'s narrow
    methods, never through `repo.backend`: one place sees every storage access and its order."""
    root = PYPROJECT.parent / "backupfs"
    found = [
        f"{path.relative_to(root.parent)}:{node.lineno}"
        for package in SERVICES
        for path in sorted((root / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "backend"
    ]
    assert found == []
